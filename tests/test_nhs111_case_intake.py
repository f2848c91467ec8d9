"""Flat NHS 111 case JSON over HTTP: priority, classification and breach time from the rule files."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from adapters.nhs111_case import parse_nhs111_case
from common.datetimes import parse_source_datetime
from gateway.cas.rules.intake import QueueDecision, decide_intake
from gateway.cas.rules.schema import RuleRegistry, load_rules
from tests.conftest import fixture_bytes, fixture_json, task_of

RULES = load_rules()


def _post(client, name):  # type: ignore[no-untyped-def]
    return client.post("/ingest/nhs111", content=fixture_bytes(name), headers={"Content-Type": "application/json"})


def _breach(task):  # type: ignore[no-untyped-def]
    return parse_source_datetime(task["restriction"]["period"]["end"])


def test_option2_case_gets_the_six_hour_default_CAS_03(client) -> None:
    """CAS-03: option2 case gets the six hour default."""
    response = _post(client, "option2-standard.case.json")
    assert response.status_code == 201, response.text
    task = task_of(response.json())
    call_time = parse_source_datetime(fixture_json("option2-standard.case.json")["call_time"])
    assert RULES.services["bnssg"].call_handler_timeframe == timedelta(hours=6)
    assert task["restriction"]["period"]["end"] == "2026-11-23T15:15:00Z"
    assert _breach(task) == call_time + RULES.services["bnssg"].call_handler_timeframe
    assert task["priority"] == "urgent"
    assert task["status"] == "ready" and task["intent"] == "order"
    assert "businessStatus" not in task  # blank classification
    assert response.headers["location"] == f"http://testserver/fhir/Task/{task['id']}/_history/1"
    assert "CAS-03" in " ".join(i.get("valueString", "") for i in task["input"])


def test_third_party_call_routes_to_bsw_with_six_hour_default_CAS_03(client) -> None:
    """CAS-03: third party call routes to bsw with six hour default."""
    task = task_of(_post(client, "third-party-bsw.case.json").json())
    assert task["owner"]["display"] == "IAP MHCAS BSW"
    assert task["restriction"]["period"]["end"] == "2026-11-23T17:40:00Z"


def test_positive_red_flag_answer_sets_urgent_cn_review_and_keeps_six_hours_CAS_04(client) -> None:
    """CAS-04: positive red flag answer sets urgent cn review and keeps six hours."""
    response = _post(client, "option2-red-flag.case.json")
    task = task_of(response.json())
    assert task["businessStatus"]["coding"][0] == {
        "system": "https://fhir.iap-gateway.org/CodeSystem/cas-classification",
        "code": "urgent-cn-review",
        "display": "Urgent CN Review",
    }
    assert task["restriction"]["period"]["end"] == "2026-11-23T16:05:00Z"  # still 6-hour
    qr = client.get(f"/fhir/QuestionnaireResponse/{_supporting(client, task, 'QuestionnaireResponse')}").json()
    assert [item["answer"][0]["valueBoolean"] for item in qr["item"]] == [True, False, False]


def test_option1_case_takes_its_dx_timeframe_CAS_05(client) -> None:
    """CAS-05: option1 case takes its dx timeframe."""
    task = task_of(_post(client, "option1-dx12.case.json").json())
    dx12 = RULES.services["bnssg"].dispositions["Dx12"]
    assert dx12.within == timedelta(hours=2)
    assert task["restriction"]["period"]["end"] == "2026-11-23T14:30:00Z"
    assert task["priority"] == "asap"
    assert {"system": "https://fhir.nhs.uk/CodeSystem/pathways-dx-codes", "code": "Dx12"} in [i.get("valueCoding") for i in task["input"]]


def test_online_case_in_summer_time_is_written_with_the_bst_offset_CAS_05(client) -> None:
    """CAS-05: online case in summer time is written with the bst offset."""
    task = task_of(_post(client, "online-dx92-summer.case.json").json())
    # Dx92: within 4 hours; 22:10 BST + 4h = 02:10 BST next day
    assert task["restriction"]["period"] == {"start": "2026-07-15T22:10:00+01:00", "end": "2026-07-16T02:10:00+01:00"}
    assert task["businessStatus"]["coding"][0]["code"] == "urgent-cn-review"


def test_working_day_disposition_skips_christmas_bank_holidays_CAS_05(client) -> None:
    """CAS-05: working day disposition skips christmas bank holidays."""
    task = task_of(_post(client, "option1-dx75-christmas.case.json").json())
    # 24 Dec 2026 (Thu) + 3 working days: 25 Dec and 28 Dec (Boxing Day substitute) are bank holidays
    assert task["restriction"]["period"]["end"] == "2026-12-31T16:00:00Z"
    assert task["priority"] == "routine"


def test_resent_case_gets_its_original_reply_and_creates_nothing(client, stored) -> None:
    first = _post(client, "option2-standard.case.json")
    before = stored()
    second = _post(client, "option2-standard.case.json")
    assert second.status_code == first.status_code == 201
    assert second.json() == first.json()
    assert second.content == first.content  # the stored reply is what was sent, byte for byte
    assert task_of(second.json())["id"] == task_of(first.json())["id"]
    assert second.headers.get("x-duplicate-of")
    assert stored() == before
    assert before["Task"] == 1 and before["InboundMessage"] == 1


def test_same_patient_in_two_cases_is_one_patient(client, stored) -> None:
    import json

    case = fixture_json("option2-standard.case.json")
    case["case_id"] = "NHS111-BNSSG-20261123-0099"
    _post(client, "option2-standard.case.json")
    response = client.post("/ingest/nhs111", content=json.dumps(case))
    assert response.status_code == 201
    counts = stored()
    assert counts["Task"] == 2 and counts["Patient"] == 1


@pytest.mark.parametrize("name", ["option2-standard.case.json", "option1-dx12.case.json"])
def test_reply_is_sent_only_for_what_was_committed(client, name) -> None:
    reply = _post(client, name).json()
    for entry in reply["entry"]:
        resource = entry["resource"]
        read = client.get(f"/fhir/{resource['resourceType']}/{resource['id']}")
        assert read.status_code == 200
        assert read.json() == resource


def _supporting(client, task, rtype):  # type: ignore[no-untyped-def]
    service_request = client.get(f"/fhir/{task['focus']['reference']}").json()
    refs = [s["reference"] for s in service_request["supportingInfo"]]
    return next(r.split("/")[1] for r in refs if r.startswith(rtype))


def _dx14(client, case_id: str, red_flag: bool):  # type: ignore[no-untyped-def]
    case = fixture_json("option1-dx12.case.json")
    case["case_id"] = case_id
    case["pathways"] = {**case["pathways"], "dx": "Dx14", "dx_display": "Speak to a Primary Care Service within 12 hours"}
    case["red_flags"] = [
        {"id": "rf-harm-to-self", "question": "Are you having thoughts of harming yourself right now?", "answer": red_flag}
    ]
    response = client.post("/ingest/nhs111", content=json.dumps(case))
    assert response.status_code == 201, response.text
    task = task_of(response.json())
    explained = " ".join(
        p["valueString"] for p in client.get(f"/fhir/Task/{task['id']}/$explain").json()["parameter"] if p["name"] == "step"
    )
    return task, explained


def test_dx14_without_a_red_flag_keeps_its_twelve_hours_CAS_05(client) -> None:
    """CAS-05: option-1 Dx14 'within 12 hours', no red flag: the disposition's window, no classification."""
    task, _ = _dx14(client, "NHS111-DX14-NO-FLAG", red_flag=False)
    assert task["restriction"]["period"] == {"start": "2026-11-23T12:30:00Z", "end": "2026-11-24T00:30:00Z"}
    assert "businessStatus" not in task


def test_dx14_with_a_red_flag_gets_the_earlier_red_flag_window_CAS_04_CAS_05(client) -> None:
    """CAS-04 with CAS-05: a red flag answered yes on a 12-hour Dx14 case: Urgent CN Review and the earlier of the
    disposition's and the red-flag window (red_flags.within PT6H, red_flags.on_timed_disposition: earlier), in the trace."""
    task, explained = _dx14(client, "NHS111-DX14-FLAG", red_flag=True)
    assert task["restriction"]["period"] == {"start": "2026-11-23T12:30:00Z", "end": "2026-11-23T18:30:00Z"}
    assert task["businessStatus"]["coding"][0]["code"] == "urgent-cn-review"
    assert "CAS-04 with CAS-05" in explained and "red_flags.on_timed_disposition: earlier" in explained


def test_red_flag_on_a_timed_disposition_keeps_the_dispositions_window_when_the_rule_file_says_so_CAS_04_CAS_05() -> None:
    """CAS-04 with CAS-05: red_flags.on_timed_disposition: disposition keeps Dx14's 12 hours, and says so."""
    rules = RULES.services["bnssg"]
    keep = rules.model_copy(update={"red_flags": rules.red_flags.model_copy(update={"on_timed_disposition": "disposition"})})
    case = fixture_json("option1-dx12.case.json")
    case["pathways"] = {**case["pathways"], "dx": "Dx14"}
    case["red_flags"] = [{"id": "rf-harm-to-self", "question": "Harm?", "answer": True}]
    decision = decide_intake(parse_nhs111_case(json.dumps(case).encode()), RuleRegistry([keep]))
    assert isinstance(decision, QueueDecision)
    assert decision.timeframe == timedelta(hours=12) and decision.classification == "urgent-cn-review"
    assert any("red_flags.on_timed_disposition: disposition" in reason for reason in decision.reasons)
