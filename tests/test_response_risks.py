"""Issue 33 items 9-11 over HTTP: a risk answer is never lost (scored where the instrument allows, acted on when the
response is refused), `enableWhen` honoured (GBO), CORE-10 bands below the cut-off."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import fixture_bytes, issues, task_of
from tests.test_questionnaire_api import NHS, of_type, phq9, post

CORE10 = [
    "core-10-1-tense",
    "core-10-2-support",
    "core-10-3-cope",
    "core-10-4-talking-too-much",
    "core-10-5-panic",
    "core-10-6-plans-to-end-life",
    "core-10-7-sleep",
    "core-10-8-despairing",
    "core-10-9-unhappy",
    "core-10-10-unwanted-images",
]
CORE_CODES = ["not-at-all", "only-occasionally", "sometimes", "often", "most-or-all-of-the-time"]
REQOL_CODES = ["none-of-the-time", "only-occasionally", "sometimes", "often", "most-or-all-of-the-time"]
NO_CASE = "9990000107"  # a patient with no CAS case


def response(measure: str, answers: list[tuple[str, dict[str, Any]]], nhs: str = NO_CASE, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "QuestionnaireResponse",
        "status": "completed",
        "questionnaire": f"https://fhir.iap-gateway.org/Questionnaire/{measure}",
        "subject": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}},
        "authored": "2026-11-23T13:00:00+00:00",
        "item": [{"linkId": link, "answer": [answer]} for link, answer in answers],
        **extra,
    }


def coded(measure: str, code: str) -> dict[str, Any]:
    return {"valueCoding": {"system": f"https://fhir.iap-gateway.org/CodeSystem/{measure}-answers", "code": code}}


def core10(raw: dict[str, int], nhs: str = NO_CASE) -> dict[str, Any]:
    return response("core-10", [(link, coded("core-10", CORE_CODES[raw[link]])) for link in CORE10 if link in raw], nhs)


def warnings(outcome: dict[str, Any]) -> list[str]:
    return [text for severity, _, text in issues(outcome) if severity == "warning"]


def test_completed_core10_with_one_item_missing_is_prorated_exactly_and_item6_raises_a_flag_CAS_04(client) -> None:
    """CAS-04 (never lost) and CORE-10's own rule: one item may be missing, 10 x 20 / 9 = 22.22..., not 22."""
    raw = dict.fromkeys(CORE10[:9], 2) | {"core-10-1-tense": 3, "core-10-6-plans-to-end-life": 3}  # item 6 "Often"
    reply = post(client, core10(raw))
    assert reply.status_code == 201, reply.text
    (observation,) = of_type(reply.json(), "Observation")
    assert observation["valueQuantity"]["value"] == pytest.approx(200 / 9) and observation["valueQuantity"]["value"] != 22
    assert observation["interpretation"][0]["text"] == "Moderate-to-severe"
    assert "prorated from 9 of 10 items (20 x 10 / 9; core-10-10-unwanted-images unanswered)" in observation["note"][0]["text"]
    (flag,) = of_type(reply.json(), "Flag")
    assert "CORE-10 item 6" in flag["code"]["text"] and "Often" in flag["code"]["text"]


def test_completed_core10_with_two_items_missing_is_refused_yet_item6_raises_a_flag_it_names_CAS_04(client, stored) -> None:
    """CAS-04: refused (two missing, no prorating), but its item 6 is acted on in a transaction of its own, once."""
    raw = dict.fromkeys(CORE10[:8], 1) | {"core-10-6-plans-to-end-life": 3}
    refused = post(client, core10(raw))
    assert refused.status_code == 422, refused.text
    errors = {e for s, e, _ in issues(refused.json()) if s == "error"}
    assert errors == {
        "QuestionnaireResponse.item.where(linkId='core-10-9-unhappy')",
        "QuestionnaireResponse.item.where(linkId='core-10-10-unwanted-images')",
    }
    (said,) = warnings(refused.json())
    assert "CORE-10 item 6" in said and "acted on although this response is refused" in said and "Flag/" in said
    flag_id = said.split("Flag/", 1)[1].split(" ", 1)[0]
    flag = client.get(f"/fhir/Flag/{flag_id}").json()
    assert flag["status"] == "active" and "refused for other reasons" in flag["code"]["text"] and "extension" not in flag
    assert stored().get("QuestionnaireResponse", 0) == 0 and stored().get("Observation", 0) == 0
    again = post(client, core10(raw))  # the same refused response sent again: no second Flag, no new version
    assert again.status_code == 422 and f"Flag/{flag_id} (raised when this response was first sent)" in warnings(again.json())[0]
    assert stored().get("Flag") == 1 and client.get(f"/fhir/Flag/{flag_id}").json()["meta"]["versionId"] == "1"


def test_phq9_item9_in_a_response_refused_for_another_reason_escalates_the_open_case_CAS_10(client, stored) -> None:
    """CAS-10: item 9 answered in a response refused for a bad item 3: the open case becomes Urgent CN Review all the
    same, $explain says which rule, answer and setting decided, and the refusal names the case."""
    task = task_of(client.post("/ingest/nhs111", content=fixture_bytes("option1-dx12.case.json")).json())  # NHS
    body = phq9([1, 1, 1, 1, 1, 1, 1, 1, 2])
    body["item"][2]["answer"] = [{"valueCoding": {"system": "http://loinc.org", "code": "LA6572-7"}}]  # not an answer of item 3
    refused = post(client, body)
    assert refused.status_code == 422
    assert [e for s, e, _ in issues(refused.json()) if s == "error"] == ["QuestionnaireResponse.item.where(linkId='44259-0')"]
    (said,) = warnings(refused.json())
    assert f"Task/{task['id']} (Urgent CN Review, CAS-10)" in said and "More than half the days" in said
    escalated = client.get(f"/fhir/Task/{task['id']}").json()
    assert escalated["businessStatus"]["coding"][0]["code"] == "urgent-cn-review" and escalated["meta"]["versionId"] == "2"
    assert any("CAS-10" in i.get("valueString", "") and "refused for other reasons" in i.get("valueString", "") for i in escalated["input"])
    steps = [p["valueString"] for p in client.get(f"/fhir/Task/{task['id']}/$explain").json()["parameter"] if p["name"] == "step"]
    (step,) = [s for s in steps if "risk-escalation" in s]
    assert (
        "CAS-10" in step
        and "44260-8 answered 'More than half the days'" in step
        and "phq-9.scoring.yaml items[44260-8].risk: above 0" in step
    )
    assert stored().get("QuestionnaireResponse", 0) == 0 and stored().get("Flag", 0) == 0
    again = post(client, body)
    assert again.status_code == 422 and "escalated when this response was first sent" in warnings(again.json())[0]
    assert client.get(f"/fhir/Task/{task['id']}").json()["meta"]["versionId"] == "2"


def test_accepted_phq9_item9_escalation_is_explained_with_its_setting_CAS_10(client) -> None:
    """CAS-10: the accepted response's escalation has its $explain step too (rule, answer, scoring-file setting)."""
    task = task_of(client.post("/ingest/nhs111", content=fixture_bytes("option1-dx12.case.json")).json())
    assert post(client, phq9([0, 0, 0, 0, 0, 0, 0, 0, 1], nhs=NHS)).status_code == 201
    steps = [p["valueString"] for p in client.get(f"/fhir/Task/{task['id']}/$explain").json()["parameter"] if p["name"] == "step"]
    assert any("risk-escalation (CAS-10, CAS-04)" in s and "items[44260-8].risk: above 0" in s for s in steps), steps


def test_reqol10_item6_in_a_refused_response_raises_a_flag_PC_14(client, stored) -> None:
    """PC-14 (ReQoL-10): no total with an item missing, so refused; item 6 answered "Often" is acted on all the same."""
    measure = client.get("/fhir/Questionnaire/reqol-10").json()
    links = [i["linkId"] for i in measure["item"] if i.get("required")]
    answers = [(link, coded("reqol-10", REQOL_CODES[3 if link.startswith("reqol-6-") else 2])) for link in links[1:]]
    refused = post(client, response("reqol-10", answers))
    assert refused.status_code == 422
    assert "ReQoL-10 item 6" in warnings(refused.json())[0] and "Flag/" in warnings(refused.json())[0]
    assert stored().get("Flag") == 1 and stored().get("QuestionnaireResponse", 0) == 0


def test_a_risk_answer_in_a_response_naming_an_unknown_patient_is_refused_saying_it_was_not_acted_on_CAS_04(client, stored) -> None:
    body = phq9([0, 0, 0, 0, 0, 0, 0, 0, 3])
    body["subject"] = {"reference": "Patient/nobody"}
    refused = post(client, body)
    assert refused.status_code == 422 and "NOT acted on" in warnings(refused.json())[0]
    assert stored().get("Flag", 0) == 0


GOALS = [("gbo-goal-1-text", "gbo-goal-1-rating"), ("gbo-goal-2-text", "gbo-goal-2-rating"), ("gbo-goal-3-text", "gbo-goal-3-rating")]


@pytest.mark.parametrize("goals", [1, 2, 3])
def test_completed_gbo_with_one_two_or_three_goals_is_taken_and_each_goal_scored_PC_14(client, goals: int) -> None:
    """PC-14: up to 3 goals; a goal's rating is required only when the goal is given (enableWhen)."""
    answers = []
    for number, (text, rating) in enumerate(GOALS[:goals], start=1):
        answers += [(text, {"valueString": f"goal {number}"}), (rating, coded("gbo", str(number + 3)))]
    reply = post(client, response("gbo", answers))
    assert reply.status_code == 201, reply.text
    scores = sorted((o["code"]["text"], o["valueQuantity"]["value"]) for o in of_type(reply.json(), "Observation"))
    assert scores == [(f"GBO goal {n}", n + 3) for n in range(1, goals + 1)]


def test_a_gbo_goal_given_without_its_rating_is_refused_naming_the_rating_PC_14(client) -> None:
    """PC-14: goal 2 given (so its rating enabled, and required) but not rated: 422 naming that rating only."""
    answers = [(GOALS[0][0], {"valueString": "sleep"}), (GOALS[0][1], coded("gbo", "4")), (GOALS[1][0], {"valueString": "walk"})]
    refused = post(client, response("gbo", answers))
    assert refused.status_code == 422
    assert [e for s, e, _ in issues(refused.json()) if s == "error"] == ["QuestionnaireResponse.item.where(linkId='gbo-goal-2-rating')"]


def test_a_completed_core10_below_the_cut_off_is_healthy_or_low(client) -> None:
    """Barkham et al. 2013 (issue 33 item 11): 0-5 healthy, 6-10 low."""
    for total, band in ((5, "Healthy"), (6, "Low level")):
        raw = dict.fromkeys(CORE10, 0) | {"core-10-2-support": 4, "core-10-3-cope": 4, "core-10-1-tense": 4, "core-10-5-panic": total - 4}
        reply = post(client, core10(raw, nhs="9990000042"))
        assert reply.status_code == 201, reply.text
        (observation,) = of_type(reply.json(), "Observation")
        assert (observation["valueQuantity"]["value"], observation["interpretation"][0]["text"]) == (total, band)
        assert json.dumps(reply.json()).count('"Flag"') == 0
