"""What a GP (or a client) reads in a letter (issue 34): NHS number and dates as people write them, the service's
contact details, no rule ids or traces, addressees that match where the letter goes, no empty headings."""

from __future__ import annotations

import json
import re
from typing import Any

from tests.letter_helpers import ODS, completed_case, letter_request, outbox, pcmis_contacts
from tests.test_letters import pdf_text, the_letter

RULE_ID = re.compile(r"\b(?:CAS|PC|TT)-\d{2}\b")


def _text(letter: dict[str, Any]) -> str:
    return " ".join(pdf_text(letter).split())


def _pathway_letter(client, **referral_args: Any) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """A Talking Therapies episode (Mid-Essex) and its $progress-letter (TT-14): the letter as stored."""
    from gateway.pathway_demo import gad7, phq9, referral

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
