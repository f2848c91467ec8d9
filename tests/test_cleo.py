"""CLEO both ways: the case exported in CLEO's shape; CLEO updates applied as operations (round trip)."""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import ROOT, fixture_bytes, issues, task_of

UPDATE = ROOT / "fixtures" / "cleo" / "consultation-registered.update.json"


def update(task_id: str, **changes: Any) -> bytes:
    body = json.loads(UPDATE.read_text()) | {"case_ref": task_id} | changes
    return json.dumps(body).encode()


def test_round_trip_a_111_case_exported_updated_in_cleo_shows_the_consultation_and_status_CAS_13(client) -> None:
    """CAS-13: notes in both CLEO and the record; a registered practitioner's consultation completes the case."""
    task = task_of(client.post("/ingest/nhs111", content=fixture_bytes("option2-standard.case.json")).json())
    exported = client.get(f"/export/cleo/{task['id']}").json()
    assert exported | {"case_notes": []} == exported | {
        "format": "cleo-case/1",
        "case_ref": task["id"],
        "service": "bnssg",
        "status": "open",
        "priority": "urgent",
        "timeframe_minutes": 360,
        "breach_time": "2026-11-23T15:15:00Z",
        "classification": "",
        "consultations": [],
        "case_notes": [],
    }
    reply = client.post("/ingest/cleo", content=update(task["id"]))
    assert reply.status_code == 200, reply.text
    case = reply.json()
    assert case["status"] == "completed"
    (consultation,) = case["consultations"]
    assert consultation["practitioner"] == "Practitioner Registered (synthetic)" and "safety plan agreed" in consultation["notes"]
    assert client.get(f"/fhir/Task/{task['id']}").json()["status"] == "completed"
    encounters = client.get("/fhir/Encounter/" + _consultation_encounter(client, task)).json()
    assert encounters["type"][0]["text"] == "CAS consultation (registered practitioner)"
    assert client.get(f"/export/cleo/{task['id']}").json() == case


def _consultation_encounter(client, task: dict[str, Any]) -> str:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from gateway.platform.store.models import ResourceRow

    with client.app.state.sessions() as session:
        rows = session.execute(select(ResourceRow).where(ResourceRow.resource_type == "Encounter")).scalars()
        return next(r.id for r in rows if "consultation" in r.content)


def test_cleo_updates_obey_the_case_rules_and_are_applied_once_CAS_08(client, stored) -> None:
    """CAS-08 from CLEO too: a downgrade is refused; a re-sent update id changes nothing."""
    task = task_of(client.post("/ingest/nhs111", content=fixture_bytes("option2-standard.case.json")).json())
    down = client.post(
        "/ingest/cleo", content=update(task["id"], update_id="CLEO-U-9", event="cn-review", priority="routine", registered=None, notes=None)
    )
    assert down.status_code == 409 and "CAS-08" in issues(down.json())[0][2]
    attempt = update(
        task["id"], update_id="CLEO-U-10", event="contact-attempt", kind="safety-call", outcome="failed", registered=None, notes=None
    )
    first = client.post("/ingest/cleo", content=attempt)
    assert first.json()["failed_contacts"] == 1
    before = stored()
    again = client.post("/ingest/cleo", content=attempt)
    assert again.json() == first.json() and stored() == before


def test_bad_cleo_update_is_refused_naming_the_field(client) -> None:
    task = task_of(client.post("/ingest/nhs111", content=fixture_bytes("option2-standard.case.json")).json())
    naive = client.post("/ingest/cleo", content=update(task["id"], at="2026-11-23T12:40:00"))
    assert naive.status_code == 400 and issues(naive.json())[0][1] == "at"
    unknown = client.post("/ingest/cleo", content=update("no-such-case"))
    assert unknown.status_code == 404
    wrong = client.post("/ingest/cleo", content=update(task["id"], event="teleport"))
    assert wrong.status_code == 400 and issues(wrong.json())[0][1] == "event"
