"""Outcome measures over HTTP: Questionnaires served, responses checked, scored, stored; risk never lost."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from fhir_mapping.parameters import from_parameters
from tests.conftest import ROOT, fixture_bytes, issues, task_of

MEASURES = ROOT / "fixtures" / "measures"
LA = {0: "LA6568-5", 1: "LA6569-3", 2: "LA6570-1", 3: "LA6571-9"}
PHQ = ["44250-9", "44255-8", "44259-0", "44254-1", "44251-7", "44258-2", "44252-5", "44253-3", "44260-8"]
GAD = ["69725-0", "68509-9", "69733-4", "69734-2", "69735-9", "69689-8", "69736-7"]
NHS = "9990000042"  # the patient of fixtures/nhs111/option1-dx12.case.json


def qr(questionnaire: str, links: list[str], values: list[int], authored: str, nhs: str = NHS, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "QuestionnaireResponse",
        "status": "completed",
        "questionnaire": questionnaire,
        "subject": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}},
        "authored": authored,
        "item": [
            {"linkId": link, "answer": [{"valueCoding": {"system": "http://loinc.org", "code": LA[v]}}]}
            for link, v in zip(links, values, strict=True)
        ],
        **extra,
    }


def phq9(values: list[int], authored: str = "2026-11-23T13:00:00+00:00", **extra: Any) -> dict[str, Any]:
    return qr("https://fhir.iap-gateway.org/Questionnaire/phq-9", PHQ, values, authored, **extra)


def gad7(values: list[int], authored: str = "2026-11-23T13:00:00+00:00", **extra: Any) -> dict[str, Any]:
    return qr("https://fhir.iap-gateway.org/Questionnaire/gad-7", GAD, values, authored, **extra)


def post(client, resource: dict[str, Any] | bytes):  # type: ignore[no-untyped-def]
    body = resource if isinstance(resource, bytes) else json.dumps(resource).encode()
    return client.post("/fhir/QuestionnaireResponse", content=body, headers={"Content-Type": "application/fhir+json"})


def of_type(reply: dict[str, Any], rtype: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in reply["entry"] if e["resource"]["resourceType"] == rtype]


def test_questionnaires_are_served_and_searchable(client) -> None:
    every = client.get("/fhir/Questionnaire").json()
    names = {e["resource"]["id"] for e in every["entry"]}
    assert {"phq-9", "gad-7", "dialog", "reqol-10", "wsas", "iapt-phobia", "core-10", "gbo", "mhcas-red-flags"} <= names
    by_url = client.get("/fhir/Questionnaire", params={"url": "https://fhir.iap-gateway.org/Questionnaire/phq-9"}).json()
    assert [e["resource"]["id"] for e in by_url["entry"]] == ["phq-9"]
    by_code = client.get("/fhir/Questionnaire", params={"code": "http://loinc.org|69737-5"}).json()
    assert [e["resource"]["id"] for e in by_code["entry"]] == ["gad-7"]
    by_name = client.get("/fhir/Questionnaire", params={"name": "dialog"}).json()
    assert [e["resource"]["id"] for e in by_name["entry"]] == ["dialog"]
    assert client.get("/fhir/Questionnaire/wsas").json()["url"] == "https://fhir.iap-gateway.org/Questionnaire/wsas"
    assert client.get("/fhir/Questionnaire/nope").status_code == 404


def test_phq9_is_scored_and_stored_as_a_searchable_observation_TT_05(client) -> None:
    """TT-05: total 12 -> moderate, coded LOINC 44261-6 + SNOMED 720433000, derived from the response."""
    response = post(client, phq9([2, 2, 1, 2, 1, 1, 1, 2, 0]))
    assert response.status_code == 201, response.text
    reply = response.json()
    stored_qr = of_type(reply, "QuestionnaireResponse")[0]
    assert response.headers["location"] == f"http://testserver/fhir/QuestionnaireResponse/{stored_qr['id']}/_history/1"
    (observation,) = of_type(reply, "Observation")
    assert observation["valueQuantity"] == {"value": 12, "unit": "{score}", "system": "http://unitsofmeasure.org", "code": "{score}"}
    assert [c["code"] for c in observation["code"]["coding"]] == ["44261-6", "720433000"]
    assert observation["interpretation"][0]["text"] == "Moderate"
    assert observation["derivedFrom"] == [{"reference": f"QuestionnaireResponse/{stored_qr['id']}"}]
    patient = observation["subject"]["reference"]
    found = client.get("/fhir/Observation", params={"patient": patient, "code": "http://loinc.org|44261-6", "date": "ge2026-11-23"}).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [observation["id"]]
    assert client.get("/fhir/Observation", params={"patient": patient, "date": "lt2026-11-23"}).json()["total"] == 0
    assert client.get("/fhir/QuestionnaireResponse", params={"patient": patient}).json()["total"] == 1


def test_item9_answered_above_zero_turns_the_open_cas_task_into_urgent_cn_review_CAS_10(client) -> None:
    """CAS-10 (and CAS-04): PHQ-9 item 9 > 0 for a patient with an open CAS case."""
    case = client.post("/ingest/nhs111", content=fixture_bytes("option1-dx12.case.json"))
    task = task_of(case.json())
    assert "businessStatus" not in task
    reply = post(client, json.loads((MEASURES / "phq-9-item9-risk.qr.json").read_bytes()))
    assert reply.status_code == 201, reply.text
    assert of_type(reply.json(), "Flag") == []
    escalated = client.get(f"/fhir/Task/{task['id']}").json()
    assert escalated["businessStatus"]["coding"][0]["code"] == "urgent-cn-review"
    assert escalated["meta"]["versionId"] == "2"
    assert any("CAS-10" in i.get("valueString", "") and "item 9" in i.get("valueString", "") for i in escalated["input"])
    assert client.get("/fhir/Task", params={"business-status": "urgent-cn-review"}).json()["total"] == 1


def test_item9_with_no_open_case_raises_a_flag_on_the_patient_CAS_04(client) -> None:
    """CAS-04: never lost: with no CAS case to escalate, a Flag."""
    reply = post(client, phq9([0, 0, 0, 0, 0, 0, 0, 0, 2], nhs="9990000107"))
    assert reply.status_code == 201
    (flag,) = of_type(reply.json(), "Flag")
    assert flag["status"] == "active" and "item 9" in flag["code"]["text"] and "More than half the days" in flag["code"]["text"]
    assert client.get(f"/fhir/Flag/{flag['id']}").status_code == 200
    outcome = reply.json()["entry"][0]["response"]["outcome"]
    assert any(severity == "information" and "risk" in text for severity, _, text in issues(outcome))


def test_loinc_form_responses_are_accepted_as_they_come(client) -> None:
    lhc = post(client, fixture_bytes_measure("phq-9-lhc-forms.qr.json"))
    assert lhc.status_code == 201, lhc.text
    assert of_type(lhc.json(), "Observation")[0]["valueQuantity"]["value"] == 8
    stored = of_type(lhc.json(), "QuestionnaireResponse")[0]
    assert stored["questionnaire"] == "https://fhir.iap-gateway.org/Questionnaire/phq-9|1.0.0"
    assert stored["item"][0]["linkId"] == "44250-9"  # LHC-Forms "/44250-9" kept as the bare LOINC code
    quirk = post(client, fixture_bytes_measure("gad-7-loinc-quirk.qr.json"))
    assert quirk.status_code == 201, quirk.text
    assert of_type(quirk.json(), "Observation")[0]["valueQuantity"]["value"] == 10


def test_incomplete_response_is_stored_and_says_why_there_is_no_total(client) -> None:
    partial = phq9([1, 1, 1, 1, 1, 1, 1, 1, 0], status="in-progress")
    partial["item"].pop(3)
    reply = post(client, partial)
    assert reply.status_code == 201
    assert of_type(reply.json(), "Observation") == []
    ((severity, element, text),) = issues(reply.json()["entry"][0]["response"]["outcome"])
    assert severity == "information" and "44254-1" in text


def test_resent_response_gets_the_original_reply_and_creates_nothing(client, stored) -> None:
    body = phq9([1, 1, 1, 1, 1, 1, 1, 1, 0], identifier={"system": "https://example.org/forms", "value": "F-1"})
    first = post(client, body)
    before = stored()
    again = post(client, body)
    assert again.status_code == 201 and again.json() == first.json() and again.headers.get("x-duplicate-of")
    assert stored() == before


def _wrong_type(r: dict[str, Any]) -> None:
    r["item"][0]["answer"] = [{"valueString": "often"}]


def _outside(r: dict[str, Any]) -> None:
    r["item"][2]["answer"] = [{"valueCoding": {"system": "http://loinc.org", "code": "LA6572-7"}}]


def _missing(r: dict[str, Any]) -> None:
    r["item"] = [i for i in r["item"] if i["linkId"] != "44260-8"]


def _duplicate(r: dict[str, Any]) -> None:
    r["item"].append(copy.deepcopy(r["item"][0]))


def _unknown_item(r: dict[str, Any]) -> None:
    r["item"].append({"linkId": "99999-9", "answer": [{"valueBoolean": True}]})


@pytest.mark.parametrize(
    ("mutate", "element", "words"),
    [
        (_wrong_type, "QuestionnaireResponse.item.where(linkId='44250-9')", "valueCoding"),
        (_outside, "QuestionnaireResponse.item.where(linkId='44259-0')", "not an allowed answer"),
        (_missing, "QuestionnaireResponse.item.where(linkId='44260-8')", "required item"),
        (_duplicate, "QuestionnaireResponse.item.where(linkId='44250-9')", "more than once"),
        (_unknown_item, "QuestionnaireResponse.item.where(linkId='99999-9')", "not an item"),
        (
            lambda r: r.update(questionnaire="https://example.org/Questionnaire/k10"),
            "QuestionnaireResponse.questionnaire",
            "unknown questionnaire",
        ),
    ],
    ids=[
        "wrong-item-type",
        "answer-outside-allowed-set",
        "missing-required-item",
        "duplicate-linkid",
        "unknown-linkid",
        "unknown-questionnaire",
    ],
)
def test_bad_response_is_refused_422_naming_the_link_id_and_stores_nothing(client, stored, mutate, element: str, words: str) -> None:
    body = phq9([1, 1, 1, 1, 1, 1, 1, 1, 0])  # no risk answer (one in a refused response: tests/test_response_risks.py)
    mutate(body)
    response = post(client, body)
    assert response.status_code == 422, response.text
    assert any(e == element and words in d for s, e, d in issues(response.json()) if s == "error"), issues(response.json())
    assert stored().get("QuestionnaireResponse", 0) == 0 and stored().get("Observation", 0) == 0 and stored().get("Flag", 0) == 0


def test_a_status_outside_its_value_set_is_refused_by_its_element_and_nothing_is_stored(client, stored) -> None:
    """fhir.resources takes any code; QuestionnaireResponse.status has a required binding, so the gateway checks it."""
    body = phq9([1, 1, 1, 1, 1, 1, 1, 1, 1])
    body["status"] = "bogus"
    response = post(client, body)
    assert response.status_code == 400, response.text
    assert issues(response.json())[0][1:] == (
        "QuestionnaireResponse.status",
        "status 'bogus' is not one of in-progress, completed, amended, entered-in-error, stopped",
    )
    assert stored().get("QuestionnaireResponse", 0) == 0


def test_response_for_a_different_patient_than_its_encounter_is_refused(client, stored) -> None:
    task = task_of(client.post("/ingest/nhs111", content=fixture_bytes("option2-standard.case.json")).json())  # patient 9990000018
    before = stored()
    body = phq9([1, 1, 1, 1, 1, 1, 1, 1, 1], encounter={"reference": task["encounter"]["reference"]})  # subject 9990000042
    response = post(client, body)
    assert response.status_code == 422
    assert issues(response.json())[0][1] == "QuestionnaireResponse.encounter"
    assert stored() == before


def test_naive_authored_and_unknown_patient_reference_are_refused(client) -> None:
    naive = post(client, phq9([0] * 9, authored="2026-11-23T13:00:00"))
    assert naive.status_code == 400 and issues(naive.json())[0][1] == "QuestionnaireResponse.authored"
    unknown = phq9([0] * 9)
    unknown["subject"] = {"reference": "Patient/nobody"}
    response = post(client, unknown)
    assert response.status_code == 422 and issues(response.json())[0][1] == "QuestionnaireResponse.subject"


def test_outcome_summary_pairs_first_and_latest_with_nhs_talking_therapies_verdicts(client) -> None:
    """TT-05/TT-06 paired: PHQ-9 18 -> 7 and GAD-7 14 -> 6: reliable improvement and recovery."""
    encounter_refs = []
    for when, phq_values, gad_values in (
        ("2026-10-01T10:00:00+01:00", [2, 2, 2, 2, 2, 2, 2, 2, 2], [2, 2, 2, 2, 2, 2, 2]),
        ("2026-11-20T10:00:00+00:00", [1, 1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 0]),
    ):
        assert post(client, phq9(phq_values, authored=when)).status_code == 201
        assert post(client, gad7(gad_values, authored=when)).status_code == 201
        encounter_refs.append(when)
    patient = client.get("/fhir/Patient", params={"identifier": f"https://fhir.nhs.uk/Id/nhs-number|{NHS}"}).json()["entry"][0]["resource"]
    summary = from_parameters(client.get(f"/fhir/Patient/{patient['id']}/$outcome-summary").json())
    phq = summary["measures"]["phq-9"]["scores"]["total"]
    assert (phq["first"]["value"], phq["latest"]["value"], phq["change"]) == (18, 7, -11)
    assert phq["reliable_improvement"] is True and phq["recovery"] is True
    gad = summary["measures"]["gad-7"]["scores"]["total"]
    assert (gad["first"]["value"], gad["latest"]["value"]) == (14, 6)
    assert summary["talking_therapies"] == {
        "paired": True,
        "caseness_first": True,
        "caseness_latest": False,
        "recovery": True,
        "reliable_improvement": True,
        "reliable_deterioration": False,
        "reliable_recovery": True,
    }
    assert summary["minimum_data_set"]["required"] == ["phq-9", "gad-7", "iapt-phobia", "wsas", "employment-status"]


def test_dialog_improvement_of_a_quarter_point_is_reported_PC_11(client) -> None:
    """PC-11: DIALOG mean up by >= 0.25 between paired measures."""
    dialog = client.get("/fhir/Questionnaire/dialog").json()
    links = [i["linkId"] for i in dialog["item"] if i["type"] == "choice"][:11]

    def response(values: list[int], when: str) -> dict[str, Any]:
        item_answers = []
        for link, value in zip(links, values, strict=True):
            option = next(o for o in next(i for i in dialog["item"] if i["linkId"] == link)["answerOption"] if _score(o) == value)
            item_answers.append({"linkId": link, "answer": [{k: v for k, v in option.items() if k.startswith("value")}]})
        return {
            "resourceType": "QuestionnaireResponse",
            "status": "in-progress",
            "questionnaire": dialog["url"],
            "subject": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": NHS}},
            "authored": when,
            "item": item_answers,
        }

    assert post(client, response([4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5], "2026-09-01T10:00:00+01:00")).status_code == 201
    assert post(client, response([4, 4, 4, 4, 4, 5, 5, 4, 5, 5, 5], "2026-11-01T10:00:00+00:00")).status_code == 201
    patient = client.get("/fhir/Patient", params={"identifier": f"https://fhir.nhs.uk/Id/nhs-number|{NHS}"}).json()["entry"][0]["resource"]
    sqol = from_parameters(client.get(f"/fhir/Patient/{patient['id']}/$outcome-summary").json())["measures"]["dialog"]["scores"][
        "sqol-mean"
    ]
    assert (sqol["first"]["value"], sqol["latest"]["value"], sqol["change"], sqol["improvement"]) == (4, 4.25, 0.25, True)


def _score(option: dict[str, Any]) -> float | None:
    if "valueInteger" in option:
        return float(option["valueInteger"])
    return next((e["valueDecimal"] for e in option.get("extension", []) if e["url"].endswith("ordinalValue")), None)


def fixture_bytes_measure(name: str) -> bytes:
    return (MEASURES / name).read_bytes()
