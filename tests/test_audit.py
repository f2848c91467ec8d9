"""The audit trail: an AuditEvent for every create, read, search, operation and delivery (who, what, when, outcome).

Changes are audited in their own transaction (no change without its event, no event for a change
rolled back); reads and refusals before the reply is sent; all searchable at /fhir/AuditEvent.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from prometheus_client import REGISTRY

from gateway.cas.safety_calls import tick
from gateway.platform.audit import record_delivery
from tests.conftest import NOW, fixture_bytes, task_of
from tests.test_cas_operations import op


def events(client, **search: str) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    bundle = client.get("/fhir/AuditEvent", params={"_count": "200", **search}).json()
    assert bundle["resourceType"] == "Bundle", bundle
    return [e["resource"] for e in bundle.get("entry", [])]


def refs(event: dict[str, Any]) -> set[str]:
    return {e["what"]["reference"] for e in event.get("entity", []) if "what" in e}


def test_a_create_is_audited_with_its_client_what_it_wrote_and_the_patient(client_with, client) -> None:
    sender = client_with({"ingest:nhs111"})
    reply = sender.post("/ingest/nhs111", content=fixture_bytes("option2-standard.case.json"))
    task = task_of(reply.json())
    (event,) = events(client, action="C")
    assert event["type"]["code"] == "rest" and event["subtype"][0]["code"] == "create" and event["outcome"] == "0"
    assert event["recorded"] == "2026-11-23T12:00:00Z"
    who = event["agent"][0]
    assert who["requestor"] is True and who["who"]["display"].startswith("test-") and who["network"]["address"] == "testclient"
    assert {f"Task/{task['id']}", task["for"]["reference"]} <= refs(event)
    assert event["entity"][-1]["description"] == "POST /ingest/nhs111"


def test_a_read_and_a_search_are_audited_with_what_they_showed(client) -> None:
    task = task_of(client.post("/ingest/nhs111", content=fixture_bytes("option2-standard.case.json")).json())
    client.get(f"/fhir/Task/{task['id']}")
    client.get("/fhir/Task", params={"status": "ready"})
    read = events(client, action="R", entity=f"Task/{task['id']}")
    assert len(read) == 1 and task["for"]["reference"] in refs(read[0])
    (search,) = [e for e in events(client, action="E") if e["entity"][-1]["description"] == "GET /fhir/Task"]
    assert search["subtype"][0]["code"] == "search-type"
    assert base64.b64decode(search["entity"][-1]["query"]) == b"status=ready"
    assert f"Task/{task['id']}" in refs(search)


def test_an_operation_is_audited_in_its_transaction_and_a_refused_one_as_a_failure(client) -> None:
    task = task_of(client.post("/ingest/nhs111", content=fixture_bytes("option2-standard.case.json")).json())
    assert op(client, task["id"], "cn-review", practitioner="CN", suitability="registered").status_code == 200
    assert op(client, task["id"], "no-such-operation", practitioner="CN").status_code == 422
    done = [e for e in events(client, subtype="operation") if e["entity"][-1]["description"].endswith("$cn-review")]
    assert [(e["outcome"], e["action"]) for e in done] == [("0", "E")]
    assert any(r.startswith("Provenance/") for r in refs(done[0]))  # the operation's Provenance was written with it
    (refused,) = [e for e in events(client, outcome="4") if e["entity"][-1]["description"].endswith("$no-such-operation")]
    assert refused["outcomeDesc"] == "HTTP 422"


def test_a_crash_mid_change_leaves_no_create_event_only_the_failure(client, monkeypatch) -> None:
    import gateway.cas.intake

    def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(gateway.cas.intake, "batch_response", explode)
    assert client.post("/ingest/nhs111", content=fixture_bytes("option2-standard.case.json")).status_code == 500
    assert events(client, action="C", outcome="0") == []  # the attempt is audited (below), no committed create
    (failure,) = events(client, outcome="8")
    assert failure["outcomeDesc"] == "HTTP 500 (internal error)" and "Task/" not in str(refs(failure))


def test_a_resent_message_and_refused_input_are_audited_without_entities(client) -> None:
    body = fixture_bytes("option2-standard.case.json")
    client.post("/ingest/nhs111", content=body)
    client.post("/ingest/nhs111", content=body)  # the original reply again; nothing changed
    client.post("/ingest/nhs111", content=b"{}")
    creates = [e for e in events(client) if e["entity"][-1]["description"] == "POST /ingest/nhs111"]
    assert [(e["outcome"], bool(refs(e))) for e in creates] == [("0", True), ("0", False), ("4", False)]
    assert creates[1]["outcomeDesc"] == "HTTP 201 (re-send answered from the store)"


def test_the_workers_changes_are_audited_as_the_gateways_own(client, clock) -> None:
    client.post("/ingest/nhs111", content=fixture_bytes("online-dx92-summer.case.json"))  # long breached: due a safety call
    created = tick(client.app.state.sessions, client.app.state.registry, NOW)
    assert created
    (event,) = [e for e in events(client, agent="iap-gateway") if f"Task/{created[0]}" in refs(e)]
    assert event["type"]["code"] == "110100" and event["action"] == "C" and event["agent"][0]["who"]["display"] == "iap-gateway"


def _deliveries(channel: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("iap_deliveries_total", {"channel": channel, "outcome": outcome}) or 0.0


def test_a_delivery_is_audited_in_its_transaction_and_counted_once_committed(client) -> None:
    channel = "mesh-audit-test"
    delivered_before, retry_before = _deliveries(channel, "delivered"), _deliveries(channel, "retry")
    with client.app.state.sessions.begin() as session:
        record_delivery(
            session,
            channel=channel,
            destination="X26ABC1",
            entities=["CommunicationRequest/c1"],
            outcome="delivered",
            detail="ack 202",
            now=NOW,
        )
    with pytest.raises(RuntimeError), client.app.state.sessions.begin() as session:
        record_delivery(
            session, channel=channel, destination="X26ABC1", entities=["CommunicationRequest/c2"], outcome="retry", detail="x", now=NOW
        )
        raise RuntimeError("the delivery's transaction fails")
    (event,) = events(client, entity="CommunicationRequest/c1")
    assert event["type"]["code"] == "110106" and event["outcome"] == "0" and event["outcomeDesc"] == "delivered: ack 202"
    assert event["agent"][1] == {"who": {"display": "X26ABC1"}, "requestor": False, "name": channel}
    assert events(client, entity="CommunicationRequest/c2") == []
    assert _deliveries(channel, "delivered") == delivered_before + 1 and _deliveries(channel, "retry") == retry_before
    with pytest.raises(ValueError):
        record_delivery(session, channel=channel, destination="d", entities=[], outcome="lost", detail="", now=NOW)


def test_audit_search_by_agent_patient_date_and_newest_first(client, client_with) -> None:
    reader = client_with({"fhir:read"})
    task = task_of(client.post("/ingest/nhs111", content=fixture_bytes("option2-standard.case.json")).json())
    reader.get(f"/fhir/Task/{task['id']}")
    who = next(e for e in events(client, action="R"))["agent"][0]["who"]["identifier"]["value"]
    assert [e["action"] for e in events(client, agent=who)] == ["R"]
    patient = task["for"]["reference"].split("/")[1]
    assert {e["action"] for e in events(client, patient=patient)} == {"C", "R"}
    assert events(client, date="lt2026-11-23") == [] and events(client, date="ge2026-11-23")
    oldest, newest = events(client)[0], events(client, _sort="-date")[0]
    assert oldest["id"] != newest["id"]
    paged = client.get("/fhir/AuditEvent", params={"_count": 1}).json()
    assert paged["total"] >= 3 and any(link["relation"] == "next" for link in paged["link"])
    assert client.get(f"/fhir/AuditEvent/{oldest['id']}").json() == oldest
    assert client.get("/fhir/AuditEvent", params={"name": "x"}).status_code == 400
    assert client.get("/fhir/AuditEvent/nope").status_code == 404
