"""Acknowledgements that never come (GPCM-SD-095, issue 34): over the real MESH sandbox, a letter nobody acknowledges is
shown "unacknowledged", counted for alerting, and given to the service desk as a Task; a late acknowledgement still counts."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fhir_mapping.ids import resource_id
from gateway.letters.outbox.worker import OUTBOX_TASK_SYSTEM
from tests.conftest import metric_value
from tests.letter_helpers import completed_case, outbox
from tests.mesh_sandbox import GATEWAY_MAILBOX, PRACTICE_MAILBOX
from tests.test_mesh_delivery import itk_ack, mesh_worker


def _desk_task(client, delivery: str, kind: str = "unacknowledged") -> dict[str, Any]:  # type: ignore[no-untyped-def]
    reply = client.get(f"/fhir/Task/{resource_id('Task', f'Outbox/{delivery}', kind)}")
    assert reply.status_code == 200, reply.text
    return reply.json()  # type: ignore[no-any-return]


def test_a_letter_nobody_acknowledges_is_raised_for_the_service_desk_GPCM_SD_095(app, client, clock, mesh, tmp_path) -> None:
    completed_case(client)
    worker = mesh_worker(app, clock, mesh, tmp_path)
    assert [status for _, status in worker.deliver_once()] == ["sent"]
    assert len(mesh.inbox(PRACTICE_MAILBOX)) == 1
    before = metric_value(client.get("/metrics").text, "iap_deliveries_total", channel="mesh", outcome="unacknowledged")
    clock.set(clock.now() + timedelta(hours=47))
    assert worker.run_pass()["unacknowledged"] == 0  # not yet due (IAP_OUTBOX_ACK_DUE_HOURS, 48 by default)
    clock.set(clock.now() + timedelta(hours=2))
    assert worker.run_pass()["unacknowledged"] == 1
    (row,) = outbox(client)
    assert row["status"] == "unacknowledged" and "GPCM-SD-095" in row["reason"]
    task = _desk_task(client, row["id"])
    assert task["code"]["coding"][0] == {
        "system": OUTBOX_TASK_SYSTEM,
        "code": "letter-unacknowledged",
        "display": "Letter not acknowledged",
    }
    assert task["status"] == "requested" and task["focus"]["reference"] == row["letter"]
    assert task["for"]["reference"].startswith("Patient/")
    after = metric_value(client.get("/metrics").text, "iap_deliveries_total", channel="mesh", outcome="unacknowledged")
    assert after == before + 1
    clock.set(clock.now() + timedelta(hours=50))
    assert worker.run_pass()["unacknowledged"] == 0 and _desk_task(client, row["id"])["meta"]["versionId"] == "1"  # raised once
    worker.close()


def test_a_letter_received_but_never_filed_is_raised_with_its_own_reason_GPCM_SD_095(app, client, clock, mesh, tmp_path) -> None:
    """The practice's system sends the infrastructure acknowledgement (ITK 20013) but no business acknowledgement comes:
    `unacknowledged` with its own reason and a `letter-not-filed` Task; the metric counts it; a late business
    acknowledgement still moves it to delivered, and MESH tracking alone does not."""
    completed_case(client)
    worker = mesh_worker(app, clock, mesh, tmp_path)
    assert [status for _, status in worker.deliver_once()] == ["sent"]
    (row,) = outbox(client)
    with mesh.client(PRACTICE_MAILBOX) as gp:
        (message,) = mesh.inbox(PRACTICE_MAILBOX)
        gp.acknowledge_message(message["id"])  # downloaded: MESH tracking says acknowledged too
        gp.send_message(
            GATEWAY_MAILBOX, itk_ack(row["itk_message_id"], "ok", "20013", "Infrastructure ACK"), workflow_id="GPFED_CONSULT_REPORT_ACK"
        )
    assert worker.run_pass()["acknowledgements"] == 2
    received = client.get(f"/outbox/{row['id']}").json()
    assert received["status"] == "delivered" and "business acknowledgement awaited" in received["reason"]
    before = metric_value(client.get("/metrics").text, "iap_deliveries_total", channel="mesh", outcome="unacknowledged")
    clock.set(clock.now() + timedelta(hours=47))
    assert worker.run_pass()["unacknowledged"] == 0  # not yet due (IAP_OUTBOX_ACK_DUE_HOURS, 48 by default)
    clock.set(clock.now() + timedelta(hours=2))
    assert worker.run_pass()["unacknowledged"] == 1
    raised = client.get(f"/outbox/{row['id']}").json()
    assert raised["status"] == "unacknowledged"
    assert raised["reason"].startswith("received by the practice's system but no business acknowledgement 48 hours later")
    assert ("business-ack-overdue", "unacknowledged") in {(e["kind"], e["outcome"]) for e in raised["events"]}
    task = _desk_task(client, row["id"], "not-filed")
    assert task["code"]["coding"][0]["code"] == "letter-not-filed" and task["focus"]["reference"] == row["letter"]
    assert "infrastructure acknowledgement came, the business acknowledgement did not" in task["reasonCode"]["text"]
    never_sent = resource_id("Task", f"Outbox/{row['id']}", "unacknowledged")  # the no-acknowledgement Task is not raised
    assert client.get(f"/fhir/Task/{never_sent}").status_code == 404
    after = metric_value(client.get("/metrics").text, "iap_deliveries_total", channel="mesh", outcome="unacknowledged")
    assert after == before + 1
    clock.set(clock.now() + timedelta(hours=50))
    worker.run_pass()
    assert client.get(f"/outbox/{row['id']}").json()["status"] == "unacknowledged"  # MESH tracking alone does not settle it
    assert _desk_task(client, row["id"], "not-filed")["meta"]["versionId"] == "1"  # raised once
    with mesh.client(PRACTICE_MAILBOX) as gp:
        gp.send_message(
            GATEWAY_MAILBOX, itk_ack(row["itk_message_id"], "ok", "30001", "Patient known here"), workflow_id="GPFED_CONSULT_REPORT_ACK"
        )
    worker.run_pass()
    filed = client.get(f"/outbox/{row['id']}").json()
    assert filed["status"] == "delivered" and filed["reason"] is None
    worker.close()


def test_a_business_acknowledgement_in_time_raises_nothing_GPCM_SD_095(app, client, clock, mesh, tmp_path) -> None:
    completed_case(client)
    worker = mesh_worker(app, clock, mesh, tmp_path)
    worker.deliver_once()
    (row,) = outbox(client)
    with mesh.client(PRACTICE_MAILBOX) as gp:
        for code, text in (("20013", "Infrastructure ACK"), ("30001", "Patient known here")):
            gp.send_message(GATEWAY_MAILBOX, itk_ack(row["itk_message_id"], "ok", code, text), workflow_id="GPFED_CONSULT_REPORT_ACK")
    worker.run_pass()
    clock.set(clock.now() + timedelta(hours=100))
    assert worker.run_pass()["unacknowledged"] == 0
    done = client.get(f"/outbox/{row['id']}").json()
    assert done["status"] == "delivered" and done["reason"] is None
    worker.close()
