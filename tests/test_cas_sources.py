"""More ways onto the CAS queue (MHPL, Specialist Desk) and the queue's risk summary, over HTTP."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from tests.conftest import NOW, ROOT, fixture_bytes, fixture_json, issues, task_of
from tests.test_cas_operations import op, params

MHPL = ROOT / "fixtures" / "mhpl" / "police-call.mhpl.json"


def mhpl(client, **changes: Any):  # type: ignore[no-untyped-def]
    call = json.loads(MHPL.read_text())
    for key, value in changes.items():
        call["caller" if key == "service" else key] = {**call["caller"], "service": value} if key == "service" else value
    return client.post("/ingest/mhpl", content=json.dumps(call))


def test_mhpl_police_call_gets_the_police_timeframe_CAS_06(client) -> None:
    """CAS-06: the MHPL SOP timeframe for the caller's service (rule file: police PT1H)."""
    response = mhpl(client)
    assert response.status_code == 201, response.text
    task = task_of(response.json())
    assert task["restriction"]["period"] == {"start": "2026-11-23T11:30:00Z", "end": "2026-11-23T12:30:00Z"}
    assert "CAS-06" in next(i["valueString"] for i in task["input"] if i["type"]["coding"][0]["code"] == "rules-applied")
    referral = client.get(f"/fhir/{task['focus']['reference']}").json()
    assert referral["requester"]["display"].startswith("PC Synthetic Officer, Response officer, police")


def test_mhpl_fire_call_gets_its_own_timeframe_CAS_06(client) -> None:
    """CAS-06: timeframe by caller type (rule file: fire PT2H), no classification of its own."""
    fire = task_of(mhpl(client, service="fire", call_id="MHPL-FIRE-1").json())
    assert fire["restriction"]["period"]["end"] == "2026-11-23T13:30:00Z"
    assert "businessStatus" not in fire


def test_mhpl_caller_service_with_no_timeframe_gets_a_case_with_the_shortest_window_and_urgent_cn_review_CAS_06(client) -> None:
    """CAS-06: the handbook's call handler "will create a case" for an emergency-services professional: an unknown
    service is taken with the shortest configured MHPL window (police/ambulance PT1H), Urgent CN Review, and a warning
    naming the service; the rule trace names the setting that decided."""
    response = mhpl(client, service="lifeboat", call_id="MHPL-X-2")
    assert response.status_code == 201, response.text
    task = task_of(response.json())
    assert task["restriction"]["period"] == {"start": "2026-11-23T11:30:00Z", "end": "2026-11-23T12:30:00Z"}
    assert task["businessStatus"]["coding"][0]["code"] == "urgent-cn-review"
    outcome = response.json()["entry"][0]["response"]["outcome"]
    (warning,) = [(e, t) for severity, e, t in issues(outcome) if severity == "warning" and e == "caller.service"]
    assert "'lifeboat'" in warning[1] and "CAS-06" in warning[1]
    explained = client.get(f"/fhir/Task/{task['id']}/$explain").json()
    assert "mhpl.unknown_service_classification" in json.dumps(explained)


def test_mhpl_call_sent_twice_gets_its_original_reply(client, stored) -> None:
    first = mhpl(client)
    before = stored()
    again = mhpl(client)
    assert again.json() == first.json() and stored() == before


def test_specialist_desk_out_of_hours_case_notifies_the_gp_when_it_completes_CAS_15(client) -> None:
    """CAS-15: out of hours, a case; when it completes, the GP notification is recorded durably."""
    task = task_of(client.post("/ingest/nhs111", content=fixture_bytes("specialist-desk-ooh.case.json")).json())
    assert any(i["type"]["coding"][0]["code"] == "specialist-desk" for i in task["input"])
    assert client.get("/fhir/CommunicationRequest", params={"status": "active"}).json()["total"] == 0
    done = op(client, task["id"], "end-assessment", practitioner="Practitioner R", registered=True, notes="Notes pulled from RiO.")
    assert done.status_code == 200
    pending = client.get("/fhir/CommunicationRequest", params={"status": "active"}).json()
    (request,) = [e["resource"] for e in pending["entry"]]
    assert request["category"][0]["coding"][0]["code"] == "specialist-desk-notes"
    assert request["about"][:2] == [{"reference": f"Task/{task['id']}"}, task["focus"]]
    assert request["recipient"] == [{"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "L81007"}}]
    steps = [p["valueString"] for p in client.get(f"/fhir/Task/{task['id']}/$explain").json()["parameter"] if p["name"] == "step"]
    assert any("gp-notification (CAS-15)" in step for step in steps)
    (delivery,) = client.get("/outbox").json()["entries"]  # the letter and its delivery committed with the completion
    assert (delivery["letter_type"], delivery["recipient_kind"], delivery["recipient"], delivery["status"]) == (
        "specialist-desk-notes",
        "gp",
        "L81007",
        "pending",
    )


def test_specialist_desk_call_in_hours_is_transferred_not_queued_CAS_15(client, stored) -> None:
    """CAS-15: in hours (Mon-Fri 09:00-17:00, not a bank holiday) the caller goes to the GP practice: no case."""
    case = fixture_json("specialist-desk-ooh.case.json") | {"case_id": "MHCAS-INHOURS-1", "call_time": "2026-11-23T10:00:00+00:00"}
    before = stored()
    response = client.post("/ingest/nhs111", content=json.dumps(case))
    assert response.status_code == 422
    assert issues(response.json())[0][1] == "caller.relationship" and "CAS-15" in issues(response.json())[0][2]
    assert stored() == before
    bank_holiday = case | {"case_id": "MHCAS-BH-1", "call_time": "2026-12-28T10:00:00+00:00"}  # Boxing Day substitute: out of hours
    assert client.post("/ingest/nhs111", content=json.dumps(bank_holiday)).status_code == 201


def _load_queue(client) -> None:  # type: ignore[no-untyped-def]
    for name in ("option2-standard.case.json", "option2-red-flag.case.json", "option1-dx12.case.json", "third-party-bsw.case.json"):
        assert client.post("/ingest/nhs111", content=fixture_bytes(name)).status_code == 201


def test_queue_summary_counts_and_suggests_a_risk_level_with_evidence_CAS_16(client, clock) -> None:
    """CAS-16: counts by breach status and classification, evidence, and a suggested level (rule-file marks)."""
    _load_queue(client)
    quiet = client.get("/queue/summary", params={"service": "bnssg"}).json()
    assert quiet["by_breach_status"] == {"green": 3, "amber": 0, "red": 0, "black": 0}
    assert quiet["by_classification"] == {"(blank)": 2, "Urgent CN Review": 1}
    assert quiet["evidence"]["urgent_cn_review_not_allocated"] == 1
    assert quiet["suggested_risk_level"]["level"] == "low"
    clock.set(NOW + timedelta(hours=4, minutes=10))  # 16:10: Dx12 (14:30), standard (15:15), red flag (16:05) all breached
    busy = client.get("/queue/summary", params={"service": "bnssg"}).json()
    assert busy["by_breach_status"] == {"green": 0, "amber": 0, "red": 3, "black": 0}
    assert busy["suggested_risk_level"]["level"] == "medium"
    assert busy["suggested_risk_level"]["because"] == ["3 breached cases (>= 3)"]


def test_a_person_confirms_the_risk_level_and_both_are_kept_CAS_16(client) -> None:
    """CAS-16: the gateway suggests, a Clinical Navigator confirms; the suggestion is kept beside the decision."""
    _load_queue(client)
    body = params(service="bnssg", level="medium", practitioner="CN Smith", note="Two concerning presentations awaiting callback.")
    confirmed = client.post("/queue/$confirm-risk-level", content=body)
    assert confirmed.status_code == 201, confirmed.text
    observation = confirmed.json()
    assert observation["valueCodeableConcept"]["coding"][0]["code"] == "medium"
    assert observation["component"][0]["valueCodeableConcept"]["coding"][0]["code"] == "low"
    summary = client.get("/queue/summary", params={"service": "bnssg"}).json()
    assert summary["confirmed_risk_level"] | {"at": None} == {
        "level": "medium",
        "suggested_then": "low",
        "by": "CN Smith",
        "at": None,
        "observation": f"Observation/{observation['id']}",
    }
    assert client.get("/queue/summary", params={"service": "bsw"}).json()["confirmed_risk_level"] is None
    bad = client.post("/queue/$confirm-risk-level", content=params(service="bnssg", level="severe", practitioner="CN Smith"))
    assert bad.status_code == 400 and issues(bad.json())[0][1] == "Parameters.parameter.where(name='level')"
