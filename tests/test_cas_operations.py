"""CAS queue operations over HTTP, walked with an injected clock (CAS-07..CAS-13)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from typing import Any

import pytest

from tests.conftest import NOW, ROOT, bars_headers, fixture_bytes, fixture_json, issues, task_of


def params(**values: Any) -> bytes:
    out = []
    for name, value in values.items():
        key = {bool: "valueBoolean", int: "valueInteger"}.get(type(value), "valueString")
        out.append({"name": name.replace("_", "-"), key: value})
    return json.dumps({"resourceType": "Parameters", "parameter": out}).encode()


def op(client, task_id: str, name: str, **values: Any):  # type: ignore[no-untyped-def]
    return client.post(f"/fhir/Task/{task_id}/${name}", content=params(**values))


def new_case(client, name: str = "option2-standard.case.json") -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return task_of(client.post("/ingest/nhs111", content=fixture_bytes(name)).json())


def queue_entry(client, task_id: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return next(e for e in client.get("/queue").json()["entries"] if e["task"] == f"Task/{task_id}")


def classification(task: dict[str, Any]) -> str | None:
    return ((task.get("businessStatus") or {}).get("coding") or [{}])[0].get("code")


def test_breach_status_walks_green_amber_red_black_CAS_09(client, clock) -> None:
    """CAS-09: amber within 1 h of breaching, red once breached, black when breached over 2 h (rule file)."""
    task = new_case(client)  # breach 15:15
    seen = []
    for at in ("12:00", "14:15", "14:16", "15:15", "17:15", "17:16"):
        hours, minutes = map(int, at.split(":"))
        clock.set(NOW.replace(hour=hours, minute=minutes))
        seen.append(queue_entry(client, task["id"])["breach_status"])
    assert seen == ["green", "amber", "amber", "red", "red", "black"]


def test_one_safety_call_per_amber_or_red_case_per_interval_CAS_09(client, app, clock) -> None:
    """CAS-09: every amber and red case gets a safety call; hourly (rule file) while it stays amber or red."""
    from gateway.cas.safety_calls import tick

    task = new_case(client)  # breach 15:15: amber from 14:15
    sessions, registry = app.state.sessions, app.state.registry
    assert tick(sessions, registry, NOW) == []  # green
    first = tick(sessions, registry, NOW.replace(hour=14, minute=20))
    assert len(first) == 1
    assert tick(sessions, registry, NOW.replace(hour=14, minute=50)) == []  # same interval: nothing new
    assert len(tick(sessions, registry, NOW.replace(hour=15, minute=16))) == 1  # next interval (red)
    calls = client.get("/fhir/Task", params={"status": "requested"}).json()
    assert calls["total"] == 2
    call = client.get(f"/fhir/Task/{first[0]}").json()
    assert call["basedOn"] == [{"reference": f"Task/{task['id']}"}] and call["code"]["coding"][0]["code"] == "safety-call"
    assert [e["task"] for e in client.get("/queue").json()["entries"]] == [f"Task/{task['id']}"]  # calls are not cases


def test_safety_call_finding_new_concern_sets_urgent_cn_review_and_completes_the_call_CAS_10(client, app) -> None:
    """CAS-10: a safety call that finds new or worsening concern -> Urgent CN Review."""
    from gateway.cas.safety_calls import tick

    task = new_case(client)
    (call_id,) = tick(app.state.sessions, app.state.registry, NOW.replace(hour=14, minute=20))
    response = op(
        client,
        task["id"],
        "record-contact-attempt",
        practitioner="Call handler A",
        kind="safety-call",
        outcome="new-concern",
        safety_call=f"Task/{call_id}",
    )
    assert response.status_code == 200, response.text
    assert classification(response.json()) == "urgent-cn-review"
    assert client.get(f"/fhir/Task/{call_id}").json()["status"] == "completed"


def test_three_failed_contacts_leave_a_note_for_practitioner_review_CAS_11(client) -> None:
    """CAS-11: retry up to 3 times; after 3 failures a note for a practitioner to review."""
    task = new_case(client)
    texts = []
    for _ in range(3):
        reply = op(client, task["id"], "record-contact-attempt", practitioner="Call handler A", kind="safety-call", outcome="failed")
        texts.append(reply.json()["note"][-1]["text"])
    assert "failed contact 1 of 3" in texts[0] and "retry" in texts[0]
    assert "no contact after 3 attempts, for practitioner review" in texts[2]
    success = op(client, task["id"], "record-contact-attempt", practitioner="Call handler B", kind="safety-call", outcome="success").json()
    assert success["note"][-1]["text"] == "safety-call: contact made"
    assert next(i["valueInteger"] for i in success["input"] if i["type"]["coding"][0]["code"] == "failed-contacts") == 0


def test_cn_review_sets_suitability_and_clears_the_classification_CAS_07(client) -> None:
    """CAS-07: registered/unregistered suitability; classification cleared when the timeframe stands."""
    task = new_case(client, "option2-red-flag.case.json")
    assert classification(task) == "urgent-cn-review"
    reviewed = op(client, task["id"], "cn-review", practitioner="CN Smith", suitability="unregistered", clear_classification=True).json()
    assert classification(reviewed) is None
    assert reviewed["performerType"][0]["coding"][0]["code"] == "unregistered"
    assert reviewed["restriction"]["period"]["end"] == task["restriction"]["period"]["end"]


def test_cn_review_pinks_a_case_to_a_more_urgent_callback_CAS_07(client) -> None:
    """CAS-07 (with CAS-08): upgrading ("pinking") brings the breach time forward."""
    task = new_case(client)  # breach 15:15, priority urgent; clock 12:00
    pinked = op(client, task["id"], "cn-review", practitioner="CN Smith", timeframe="PT1H", suitability="registered").json()
    assert pinked["restriction"]["period"]["end"] == "2026-11-23T13:00:00Z"
    assert pinked["priority"] == "asap"
    assert any(i["type"]["coding"][0]["code"] == "pinked" and i["valueBoolean"] for i in pinked["input"])
    assert queue_entry(client, task["id"])["position"] == 1


@pytest.mark.parametrize(
    ("values", "element"),
    [({"timeframe": "PT8H"}, "Task.restriction.period.end"), ({"priority": "routine"}, "Task.priority")],
    ids=["later-callback", "lower-priority"],
)
def test_priority_cannot_be_downgraded_by_cn_review_CAS_08(client, values: dict[str, str], element: str) -> None:
    """CAS-08: a downgrade is refused with a clear error and changes nothing."""
    task = new_case(client)
    response = op(client, task["id"], "cn-review", practitioner="CN Smith", **values)
    assert response.status_code == 409
    ((severity, where, text),) = issues(response.json())
    assert where == element and "CAS-08" in text and "downgrade" in text
    assert client.get(f"/fhir/Task/{task['id']}").json() == client.get(f"/fhir/Task/{task['id']}").json()
    assert client.get(f"/fhir/Task/{task['id']}").json()["meta"]["versionId"] == "1"


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
def test_priority_cannot_be_downgraded_by_editing_the_task_CAS_08(client, method: str) -> None:
    """CAS-08: no free edits of a case; state changes are operations."""
    task = new_case(client)
    lowered = dict(task, priority="routine")
    response = client.request(method, f"/fhir/Task/{task['id']}", content=json.dumps(lowered))
    assert response.status_code == 405 and "CAS-08" in response.json()["issue"][0]["diagnostics"]
    assert client.get(f"/fhir/Task/{task['id']}").json()["priority"] == "urgent"


def test_priority_cannot_be_downgraded_by_a_resent_111_message_CAS_08(client) -> None:
    """CAS-08: the same BaRS referral sent again (new request id) with a less urgent Dx is refused."""
    body = fixture_json("bars-dx335-immediate.bundle.json")  # Dx335: 20 minutes
    first = client.post("/fhir/$process-message", content=json.dumps(body), headers=bars_headers())
    task = task_of(first.json())
    for entry in body["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "CarePlan":
            resource["activity"][0]["outcomeCodeableConcept"][2]["coding"][0]["code"] = "Dx14"  # 12 hours
    body["entry"][0]["fullUrl"] = "urn:uuid:0a5c3b4e-5a3f-4bb2-9d0e-111111111111"  # a new message of the same referral
    again = client.post("/fhir/$process-message", content=json.dumps(body), headers=bars_headers())
    assert again.status_code == 409
    assert "CAS-08" in issues(again.json())[0][2]
    stored = client.get(f"/fhir/Task/{task['id']}").json()
    assert stored["priority"] == "stat" and stored["meta"]["versionId"] == "1"


def test_a_resent_referral_may_make_the_case_more_urgent_and_keeps_its_history_CAS_08(client) -> None:
    """CAS-08: the same BaRS referral sent again (new request id) with a more urgent Dx upgrades the stored case,
    keeping what was done on it since; the merge is made on the version the transaction has locked."""
    body = fixture_json("bars-dx335-immediate.bundle.json")
    original_dx = None
    for entry in body["entry"]:
        if entry["resource"]["resourceType"] == "CarePlan":
            coding = entry["resource"]["activity"][0]["outcomeCodeableConcept"][2]["coding"][0]
            original_dx, coding["code"] = coding["code"], "Dx14"  # first sent as 12 hours
    first = client.post("/fhir/$process-message", content=json.dumps(body), headers=bars_headers())
    task = task_of(first.json())
    assert first.status_code == 200 and task["priority"] != "stat"
    noted = op(client, task["id"], "cn-review", practitioner="CN Smith", suitability="registered").json()
    for entry in body["entry"]:
        if entry["resource"]["resourceType"] == "CarePlan":
            entry["resource"]["activity"][0]["outcomeCodeableConcept"][2]["coding"][0]["code"] = original_dx  # Dx335: 20 minutes
    body["entry"][0]["fullUrl"] = "urn:uuid:0a5c3b4e-5a3f-4bb2-9d0e-222222222222"  # a new message of the same referral
    again = client.post("/fhir/$process-message", content=json.dumps(body), headers=bars_headers())
    assert again.status_code == 200, again.text
    stored = client.get(f"/fhir/Task/{task['id']}").json()
    assert stored["priority"] == "stat"
    assert stored["restriction"]["period"]["end"] < task["restriction"]["period"]["end"]
    assert int(stored["meta"]["versionId"]) == int(noted["meta"]["versionId"]) + 1
    assert stored["performerType"] == noted["performerType"]  # the CN review done in between is kept


def test_known_service_agreed_then_closed_by_the_cn_CAS_12(client) -> None:
    """CAS-12: usual provider documented -> patient agrees -> Referred to Known Service -> CN closes."""
    task = new_case(client)
    assert op(client, task["id"], "known-service", practitioner="CN Smith", step="agreed").status_code == 409  # nothing documented yet
    documented = op(
        client, task["id"], "known-service", practitioner="CN Smith", step="document", provider="Crisis Team (synthetic)"
    ).json()
    assert classification(documented) == "refer-to-known-service"
    agreed = op(client, task["id"], "known-service", practitioner="Call handler A", step="agreed").json()
    assert classification(agreed) == "referred-to-known-service"
    closed = op(client, task["id"], "known-service", practitioner="CN Smith", step="close").json()
    assert closed["status"] == "completed"
    assert client.get("/queue").json()["count"] == 0
    after = op(client, task["id"], "cn-review", practitioner="CN Smith", suitability="registered")
    assert after.status_code == 409 and "completed" in issues(after.json())[0][2]


def test_known_service_declined_stays_for_the_standard_callback_CAS_12(client) -> None:
    """CAS-12: the patient declines: noted, classification edited, case stays queued."""
    task = new_case(client)
    op(client, task["id"], "known-service", practitioner="CN Smith", step="document", provider="Recovery Team (synthetic)")
    declined = op(client, task["id"], "known-service", practitioner="Call handler A", step="declined").json()
    assert declined["status"] == "ready" and classification(declined) is None
    assert "declined" in declined["note"][-1]["text"]
    assert queue_entry(client, task["id"])["position"] == 1


def test_unregistered_consultation_waits_for_ratification_CAS_13(client) -> None:
    """CAS-13: an unregistered practitioner's consultation keeps the case queued until a registered practitioner ratifies it."""
    task = new_case(client)
    ended = op(client, task["id"], "end-assessment", practitioner="Practitioner U", registered=False, notes="Synthetic notes.").json()
    assert ended["status"] == "ready" and classification(ended) == "awaiting-ratification"
    closing = op(client, task["id"], "end-assessment", practitioner="Practitioner R", registered=True, notes="More notes.")
    assert closing.status_code == 409 and "ratif" in issues(closing.json())[0][2]
    refused = op(client, task["id"], "ratify", practitioner="Practitioner U2", registered=False)
    assert refused.status_code == 409
    ratified = op(client, task["id"], "ratify", practitioner="Practitioner R", registered=True).json()
    assert ratified["status"] == "completed"


def test_registered_consultation_completes_the_case_and_records_an_encounter_CAS_13(client, stored) -> None:
    """CAS-13: a registered practitioner may close the case."""
    task = new_case(client)
    before = stored()["Encounter"]
    done = op(client, task["id"], "end-assessment", practitioner="Practitioner R", registered=True, notes="Synthetic notes.").json()
    assert done["status"] == "completed"
    assert stored()["Encounter"] == before + 1


def test_physical_health_follow_up_goes_to_the_urgent_follow_up_queue_CAS_14(client) -> None:
    """CAS-14: follow-up requested before End Assessment -> Urgent Follow Up."""
    task = new_case(client)
    ended = op(
        client,
        task["id"],
        "end-assessment",
        practitioner="Practitioner R",
        registered=True,
        notes="Chest pain mentioned.",
        physical_health_follow_up=True,
    ).json()
    assert ended["status"] == "ready" and classification(ended) == "urgent-follow-up"


def test_unregistered_consultation_with_a_follow_up_keeps_both_and_can_be_ratified_CAS_13_CAS_14(client) -> None:
    """CAS-13 with CAS-14: an unregistered practitioner's End Assessment asking for a physical-health follow-up is
    classified Urgent Follow Up AND stays awaiting ratification; $ratify then works and the follow-up stands."""
    task = new_case(client)
    ended = op(
        client,
        task["id"],
        "end-assessment",
        practitioner="Practitioner U",
        registered=False,
        notes="Chest pain mentioned.",
        physical_health_follow_up=True,
    ).json()
    marks = {i["type"]["coding"][0]["code"]: i.get("valueBoolean") for i in ended["input"]}
    assert ended["status"] == "ready" and classification(ended) == "urgent-follow-up" and marks["awaiting-ratification"] is True
    closing = op(client, task["id"], "end-assessment", practitioner="Practitioner R", registered=True, notes="More notes.")
    assert closing.status_code == 409 and "ratif" in issues(closing.json())[0][2]
    assert op(client, task["id"], "ratify", practitioner="Practitioner U2", registered=False).status_code == 409
    ratified = op(client, task["id"], "ratify", practitioner="Practitioner R", registered=True)
    assert ratified.status_code == 200, ratified.text
    body = ratified.json()
    assert body["status"] == "ready" and classification(body) == "urgent-follow-up"  # the shift manager moves it on
    assert "awaiting-ratification" not in {i["type"]["coding"][0]["code"] for i in body["input"]}
    again = op(client, task["id"], "ratify", practitioner="Practitioner R", registered=True)
    assert again.status_code == 409  # ratified once
    steps = [p["valueString"] for p in client.get(f"/fhir/Task/{task['id']}/$explain").json()["parameter"] if p["name"] == "step"]
    assert any("end-assessment (CAS-13, CAS-14)" in step and "ratification" in step for step in steps)
    assert any("ratify (CAS-13, CAS-14)" in step and "follow-up stands" in step for step in steps)


def test_a_cleared_classification_keeps_the_ratification_mark_CAS_13(client) -> None:
    """CAS-13: a CN clearing the classification of an unregistered consultation does not lose its ratification."""
    task = new_case(client)
    op(client, task["id"], "end-assessment", practitioner="Practitioner U", registered=False, notes="Synthetic notes.")
    cleared = op(client, task["id"], "cn-review", practitioner="CN Smith", clear_classification=True).json()
    assert classification(cleared) is None
    assert op(client, task["id"], "ratify", practitioner="Practitioner R", registered=True).json()["status"] == "completed"


def test_explain_tells_every_decision_in_plain_words(client, clock) -> None:
    task = new_case(client, "option2-red-flag.case.json")
    clock.set(NOW + timedelta(minutes=5))
    op(client, task["id"], "cn-review", practitioner="CN Smith", timeframe="PT1H")
    steps = [p["valueString"] for p in client.get(f"/fhir/Task/{task['id']}/$explain").json()["parameter"] if p["name"] == "step"]
    assert (
        steps[0].startswith("2026-11-23T12:00:00Z intake (CAS-01, CAS-03, CAS-04) by iap-gateway intake rules")
        and "Urgent CN Review" in steps[0]
    )
    assert steps[1].startswith("2026-11-23T12:05:00Z cn-review (CAS-07, CAS-08) by CN Smith: CN review: pinked")


def test_bad_operation_input_is_refused_naming_the_parameter(client) -> None:
    task = new_case(client)
    missing = op(client, task["id"], "record-contact-attempt", practitioner="A", kind="safety-call")
    assert missing.status_code == 400 and issues(missing.json())[0][1] == "Parameters.parameter.where(name='outcome')"
    unknown = client.post(f"/fhir/Task/{task['id']}/$teleport", content=params(practitioner="A"))
    assert unknown.status_code == 422
    nobody = op(client, "00000000-0000-0000-0000-000000000000", "cn-review", practitioner="A", suitability="registered")
    assert nobody.status_code == 404


def test_two_processes_ticking_at_once_create_no_duplicate_safety_calls_CAS_09(client, database_url: str, stored) -> None:
    """CAS-09 across instances: two `iap-gateway tick` processes on the same database, same moment."""
    for name in ("option2-standard.case.json", "option2-red-flag.case.json", "option1-dx12.case.json"):
        new_case(client, name)
    env = {**os.environ, "DATABASE_URL": database_url}
    command = [sys.executable, "-m", "gateway.cli", "tick", "--now", "2026-11-23T15:10:00Z"]
    runs = [subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=120)[1] for run in runs]
    assert all(run.returncode == 0 for run in runs), outputs
    created = sum(int(out.split("tick: ")[1].split()[0]) for out in outputs)
    # amber/red at 15:10: standard (breach 15:15), red flag (16:05), Dx12 (14:30): three calls in all
    assert created == 3
    assert stored()["Task"] == 6


@pytest.mark.parametrize(
    ("parameter", "element"),
    [
        (123, "Parameters.parameter"),
        ([123], "Parameters.parameter[0]"),
        ([{"name": 1, "valueString": "x"}], "Parameters.parameter[0].name"),
    ],
    ids=["not-an-array", "item-not-an-object", "name-not-a-string"],
)
def test_an_operation_with_wrongly_typed_parameters_is_refused_by_the_element(client, parameter: Any, element: str) -> None:
    """Parameters of the wrong JSON type were a 500 (the operation read them as they came); now a 400 naming them."""
    task = new_case(client)
    response = client.post(
        f"/fhir/Task/{task['id']}/$cn-review", content=json.dumps({"resourceType": "Parameters", "parameter": parameter})
    )
    assert response.status_code == 400
    assert issues(response.json())[0][:2] == ("error", element)
    assert client.get(f"/fhir/Task/{task['id']}").json()["meta"]["versionId"] == "1"
