"""What a GP (or a client) reads in a letter (issue 34): NHS number and dates as people write them, the service's
contact details, no rule ids or traces, addressees that match where the letter goes, no empty headings."""

from __future__ import annotations

import json
import re
from typing import Any

from tests.conftest import fixture_bytes, task_of
from tests.letter_helpers import NOTES, ODS, completed_case, fhir_validate, letter_request, outbox, params, pcmis_contacts
from tests.test_letters import pdf_text, the_letter

RULE_ID = re.compile(r"\b(?:CAS|PC|TT)-\d{2}\b")


def _text(letter: dict[str, Any]) -> str:
    return " ".join(pdf_text(letter).split())


def _pathway_letter(client, **referral_args: Any) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """A Talking Therapies episode (Mid-Essex) and its $progress-letter (TT-14): the letter as stored."""
    from gateway.pathways.demo import gad7, phq9, referral

    body = referral(
        "north-essex-mid",
        "R-READ",
        "2026-11-02T10:00:00+00:00",
        "1990-01-01",
        practice="L81001",
        responses=(phq9(12), gad7(6)),
        **referral_args,
    )
    routed = client.post("/fhir/ServiceRequest/$route", json=body)
    assert routed.status_code == 201, routed.text
    episode = next(p["valueReference"]["reference"] for p in routed.json()["parameter"] if p["name"] == "episode")
    assert client.post(f"/fhir/{episode}/$progress-letter", json={"resourceType": "Parameters", "parameter": []}).status_code == 200
    letters = {r["letter"] for r in outbox(client) if r["letter_type"] == "tt-progress"}
    (letter,) = letters
    return client.get(f"/fhir/{letter}").json()  # type: ignore[no-any-return]


def test_the_nhs_number_is_grouped_3_3_4_and_dates_are_written_out(client) -> None:
    completed_case(client)
    _, letter, document = the_letter(client)
    text = _text(letter)
    assert "NHS number: 999 000 0018" in text and "9990000018" not in text
    assert "Date of birth: 12 April 1988" in text and "1988-04-12" not in text
    assert "23 November 2026" in text and not re.search(r"\d{4}-\d{2}-\d{2}", text)


def test_the_letter_head_and_footer_give_the_services_telephone_address_and_email(client) -> None:
    """The contact details come from the service's rule file (`service.contact`, bnssg.yaml for this 111 case)."""
    completed_case(client)
    _, letter, _ = the_letter(client)
    text = _text(letter)
    assert text.count("0117 496 0101") == 2 and text.count("bnssg.mhcas@example.nhs.uk") == 2 and "BS1 0AA" in text
    assert "IAP gateway" not in text


def test_a_talking_therapies_letter_prints_no_rule_ids_or_traces_TT_14(client) -> None:
    text = _text(_pathway_letter(client))
    assert RULE_ID.findall(text) == [], text
    assert "aged at least" not in text and "Progress update" in text and "01632 960201" in text


def test_a_requested_letters_lines_lose_their_rule_ids_but_keep_their_words_TT_14(client) -> None:
    patient_id = pcmis_contacts(client)
    request = letter_request("tt-lines", "tt-progress", patient_id, [], lines=("Continuing step 2 guided self-help (TT-14).",))
    request["recipient"] = [{"identifier": {"system": ODS, "value": "L81001"}}]
    reply = client.post("/fhir/CommunicationRequest", content=json.dumps(request))
    assert reply.status_code == 201, reply.text
    text = _text(reply.json())
    assert "Continuing step 2 guided self-help." in text and RULE_ID.findall(text) == []


def test_a_client_copy_when_the_gp_letter_is_withheld_is_written_to_the_client_TT_02(client) -> None:
    """PCMIS patient 9990000158 asked that the GP not be contacted (TT-02): the copy does not say the GP was written to."""
    patient_id = pcmis_contacts(client)
    recipients: list[dict[str, Any]] = [
        {"identifier": {"system": ODS, "value": "L81001"}, "display": "Synthetic Surgery"},
        {"reference": f"Patient/{patient_id}"},
    ]
    request = letter_request("tt-withheld", "tt-progress", patient_id, [], recipients=recipients)
    reply = client.post("/fhir/CommunicationRequest", content=json.dumps(request))
    assert reply.status_code == 201, reply.text
    text = _text(reply.json())
    assert "GP practice" not in text and "L81001" not in text and "Synthetic Surgery" not in text
    assert "(the patient)" in text and "your patient" not in text and "update on your therapy" in text
    assert {r["recipient_kind"] for r in outbox(client)} == {"gp", "patient"}  # the GP row is still there, to be withheld at send
    found = client.get("/fhir/Provenance", params={"target": f"DocumentReference/{reply.json()['id']}"}).json()
    said = " ".join(str(e["resource"].get("reason", "")) + str(e["resource"].get("activity", "")) for e in found["entry"])
    assert "gp not named as an addressee: TT-14" in said  # why, for $explain


def test_a_letter_to_the_gp_and_the_client_names_both(client) -> None:
    completed_case(client)
    (row,) = outbox(client)
    patient_id = row["patient"].removeprefix("Patient/") if "patient" in row else None
    _, letter, _ = the_letter(client)
    text = _text(letter)
    assert "To: Synthetic Surgery (L81001)" in text or "To: GP practice (L81001)" in text
    assert patient_id is None or "Copy:" not in text  # the CAS report goes to the GP only


def test_empty_headings_are_left_out_but_prsb_mandatory_ones_say_none_recorded(client) -> None:
    completed_case(client)
    _, letter, _ = the_letter(client)
    cas = _text(letter)
    assert "Outcome measures" not in cas and "Nothing recorded" not in cas and "None recorded" not in cas
    patient_id = pcmis_contacts(client)
    request = letter_request("mh-empty", "mh-discharge", patient_id, [], rules=("PC-13",))
    reply = client.post("/fhir/CommunicationRequest", content=json.dumps(request))
    assert reply.status_code == 201, reply.text
    discharge = _text(reply.json())
    assert "Reason for contact None recorded." in discharge and "Assessment None recorded." in discharge
    assert "Outcome measures" not in discharge and "Safety and risk" not in discharge


def _sections(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["title"]: s for s in document["entry"][0]["resource"]["section"]}


def test_plan_follow_up_and_safety_advice_are_their_own_fields_and_headings_CAS_13(client, tmp_path) -> None:
    """$end-assessment takes plan, follow-up and safety advice as their own fields; the letter shows each under its
    heading (the PDF and the R4 sections), not "Plan: Nothing recorded" beside notes that say it."""
    completed_case(
        client,
        plan="GP review in 2 weeks; continue sertraline 50 mg.",
        follow_up="Crisis team telephone call on 24 November.",
        safety_advice="Call 111 option 2 or 999 if thoughts of self-harm return.",
    )
    _, letter, document = the_letter(client)
    text = _text(letter)
    plan, follow, risk = text.index("Plan "), text.index("Follow-up "), text.index("Safety and risk ")
    assert text.index("GP review in 2 weeks; continue sertraline 50 mg.") > plan
    assert text.index("Crisis team telephone call on 24 November.") > follow
    assert text.index("Call 111 option 2 or 999 if thoughts of self-harm return.") > risk
    sections = _sections(document)
    assert "GP review in 2 weeks" in sections["Plan"]["text"]["div"] and "emptyReason" not in sections["Plan"]
    assert "Crisis team telephone call" in sections["Follow-up"]["text"]["div"]
    assert "Call 111 option 2" in sections["Safety and risk"]["text"]["div"]
    checked = fhir_validate(tmp_path, "plan-fields", {k: v for k, v in document.items() if k != "meta"})
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_ratification_can_give_the_plan_for_an_unregistered_consultation_CAS_13(client) -> None:
    task = task_of(client.post("/ingest/nhs111", content=fixture_bytes("option2-standard.case.json")).json())
    first = client.post(
        f"/fhir/Task/{task['id']}/$end-assessment",
        content=params(practitioner="Synthetic Student", registered=False, notes=NOTES, plan="Draft plan."),
    )
    assert first.status_code == 200, first.text
    ratified = client.post(
        f"/fhir/Task/{task['id']}/$ratify",
        content=params(practitioner="Dr Synthetic Registered", registered=True, plan="GP review in 2 weeks."),
    )
    assert ratified.status_code == 200 and ratified.json()["status"] == "completed", ratified.text
    _, letter, _ = the_letter(client)
    text = _text(letter)
    assert "GP review in 2 weeks." in text and "Draft plan." not in text  # the ratifier's replaces the draft


def test_a_plan_that_is_not_a_string_is_refused_naming_it_and_changes_nothing_CAS_13(client) -> None:
    task = task_of(client.post("/ingest/nhs111", content=fixture_bytes("option2-standard.case.json")).json())
    body = json.loads(params(practitioner="Dr Synthetic Registered", registered=True, notes=NOTES))
    body["parameter"].append({"name": "safety-advice", "valueBoolean": True})
    reply = client.post(f"/fhir/Task/{task['id']}/$end-assessment", json=body)
    assert reply.status_code == 400, reply.text
    assert reply.json()["issue"][0]["expression"] == ["Parameters.parameter.where(name='safety-advice')"]
    assert client.get(f"/fhir/Task/{task['id']}").json()["status"] != "completed" and outbox(client) == []
