"""Acknowledgements that never come (GPCM-SD-095, issue 34): over the real MESH sandbox, a letter nobody acknowledges is
shown "unacknowledged", counted for alerting, and given to the service desk as a Task; a late acknowledgement still counts."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fhir_mapping.ids import resource_id
from gateway.outbox.worker import OUTBOX_TASK_SYSTEM
from tests.conftest import metric_value
from tests.letter_helpers import completed_case, outbox
from tests.mesh_sandbox import PRACTICE_MAILBOX
from tests.test_mesh_delivery import mesh_worker


def _desk_task(client, delivery: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    reply = client.get(f"/fhir/Task/{resource_id('Task', f'Outbox/{delivery}', 'unacknowledged')}")
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
