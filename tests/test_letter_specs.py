"""The produced STU3 (ITK3 Send Document) message against the specifications, element by element (issue 34).

GPCM ids: the issue's (GPCM-SD-118 title, -119 text, -121 author, -091/092 subject with version) and, in brackets,
the ids of the stored GPCM requirements file (GPCM-SD-CS-022, -023, -025, -006/007, -065).
"""

from __future__ import annotations

import json
from typing import Any

from fhir_mapping.letters.itk3 import STU3_SYSTEMS
from tests.letter_helpers import completed_case, fhir_validate, letter_request, pcmis_contacts
from tests.test_letters import CARECONNECT, STU3, _by_profile, _itk3, pdf_text


def _systems(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [str(v) for k, v in node.items() if k == "system"] + [s for v in node.values() for s in _systems(v)]
    if isinstance(node, list):
        return [s for item in node for s in _systems(item)]
    return []


def _by_url(message: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for entry in message["entry"]:
        out[entry["fullUrl"]] = entry["resource"]
        if entry["resource"]["resourceType"] == "Bundle":
            out |= _by_url(entry["resource"])
    return out


def test_the_consultation_report_message_meets_send_document_element_by_element_GPCM_SD_118_119_121(client) -> None:
    completed_case(client)  # $end-assessment by "Dr Synthetic Registered" for a BNSSG case (CAS-13)
    message = _itk3(client, "send-document", "SendDocument-ConsultationReport")
    profiles, by_url = _by_profile(message), _by_url(message)
    header = message["entry"][0]["resource"]
    header_org = by_url[header["sender"]["reference"]]
    assert header_org["meta"]["profile"] == ["https://fhir.nhs.uk/STU3/StructureDefinition/CareConnect-ITK-Header-Organization-1"]
    assert header_org["identifier"][0]["value"] == "RVN" and header_org["name"] == "IAP MHCAS BNSSG"
    composition = profiles[f"{CARECONNECT}CareConnect-Composition-1"]
    assert composition["title"] == "Consultation report"  # GPCM-SD-118 (CS-022)
    assert (  # GPCM-SD-119 (CS-023): the summary, with the version
        "Consultation report for Alex Testpatient, NHS Number 9990000018, seen at IAP MHCAS BNSSG, ODS Code RVN, Version 1"
        in composition["text"]["div"]
    )
    (author_ref,) = composition["author"]
    author = by_url[author_ref["reference"]]  # GPCM-SD-121 (CS-025): the clinician named in $end-assessment
    assert author["resourceType"] == "Practitioner" and author["meta"]["profile"] == [f"{CARECONNECT}CareConnect-Practitioner-1"]
    assert author["name"][0]["use"] == "official" and author["name"][0]["family"] == "Registered"
    assert author["name"][0]["text"] == "Dr Synthetic Registered"
    custodian = by_url[composition["custodian"]["reference"]]
    assert custodian["meta"]["profile"] == [f"{CARECONNECT}CareConnect-Organization-1"] and custodian["name"] == "IAP MHCAS BNSSG"
    assert custodian["telecom"][0] == {"system": "phone", "value": "0117 496 0101", "use": "work"}
    assert not any(r["resourceType"] == "Device" for r in by_url.values())
    assert "IAP gateway" not in json.dumps(message)
    systems = _systems(message)
    assert not [s for s in systems if s.startswith("http://terminology.hl7.org/")], systems  # STU3 code systems only
    encounters = [r for r in by_url.values() if r["resourceType"] == "Encounter" and r.get("class")]
    assert all(e["class"]["system"] == "http://hl7.org/fhir/v3/ActCode" for e in encounters)
    assert f"{STU3}ITK-Device-1" not in profiles


def test_the_r4_document_names_the_clinician_as_author_and_passes_the_validator_GPCM_SD_121(client, tmp_path) -> None:
    completed_case(client)
    delivery = client.get("/outbox").json()["entries"][0]
    document = client.get(f"/fhir/{delivery['document']}").json()
    composition = document["entry"][0]["resource"]
    resources = {e["fullUrl"]: e["resource"] for e in document["entry"]}
    author = next(r for url, r in resources.items() if url.endswith(composition["author"][0]["reference"].split("/")[-1]))
    assert author["resourceType"] == "Practitioner" and author["name"][0]["text"] == "Dr Synthetic Registered"
    assert "IAP gateway" not in json.dumps(document)
    checked = fhir_validate(tmp_path, "authored", {k: v for k, v in document.items() if k != "meta"})
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_talking_therapies_progress_letter_is_sent_as_a_progress_update_GPCM_SD_118(client) -> None:
    patient_id = pcmis_contacts(client)
    request = letter_request("tt-title", "tt-progress", patient_id, [], recipients=[{"reference": f"Patient/{patient_id}"}])
    reply = client.post("/fhir/CommunicationRequest", content=json.dumps(request))
    assert reply.status_code == 201, reply.text
    document = client.get(f"/fhir/Bundle/{reply.json()['id']}").json()
    composition = document["entry"][0]["resource"]
    assert composition["title"] == "Progress update"
    author = next(e["resource"] for e in document["entry"] if e["resource"]["resourceType"] == "Practitioner")
    assert author["name"][0]["text"] == "PWP Synthetic One"  # the request's requester signs it


def test_a_replacement_letter_carries_the_next_version_GPCM_SD_091_092(client) -> None:
    patient_id = pcmis_contacts(client)
    first = letter_request("tt-versions", "tt-progress", patient_id, [], lines=("First text.",))
    one = client.post("/fhir/CommunicationRequest", content=json.dumps(first))
    assert one.status_code == 201, one.text
    two = client.post("/fhir/CommunicationRequest", content=json.dumps(first | {"payload": [{"contentString": "Second."}]}))
    assert two.status_code == 201, two.text
    newest = two.json()
    assert newest["relatesTo"][0]["target"]["reference"] == f"DocumentReference/{one.json()['id']}"
    composition = client.get(f"/fhir/Bundle/{newest['id']}").json()["entry"][0]["resource"]
    assert "Version 2" in composition["text"]["div"] and composition["relatesTo"][0]["code"] == "replaces"
    assert "Version 2" in pdf_text(newest)


def test_every_r4_system_the_stu3_rendering_maps_is_an_stu3_url() -> None:
    assert all(v.startswith("http://hl7.org/fhir/") for v in STU3_SYSTEMS.values())


EMPTY = "http://terminology.hl7.org/CodeSystem/list-empty-reason"


def test_a_section_with_nothing_to_say_is_kept_with_its_empty_reason_and_validates(client, tmp_path) -> None:
    """The R4 Composition keeps all six sections: one with nothing recorded says why (emptyReason `unavailable`, not
    `nilknown`, which would assert e.g. that there is no risk) and "None recorded."; one with entries has no emptyReason;
    the PDF leaves the empty heading out (test_letter_reading)."""
    completed_case(client)
    delivery = client.get("/outbox").json()["entries"][0]
    document = client.get(f"/fhir/{delivery['document']}").json()
    sections = {s["code"]["coding"][0]["code"]: s for s in document["entry"][0]["resource"]["section"]}
    assert list(sections) == ["reason-for-contact", "assessment", "outcome-measures", "plan", "safety-risk", "follow-up"]
    measures = sections["outcome-measures"]  # a CAS consultation has no scores
    assert measures["emptyReason"] == {"coding": [{"system": EMPTY, "code": "unavailable", "display": "Unavailable"}]}
    assert "entry" not in measures and "None recorded." in measures["text"]["div"]
    assert all("emptyReason" not in s for s in sections.values() if s.get("entry"))  # cmp-2: only an empty section has one
    assert all(s.get("entry") or s.get("emptyReason") or "None recorded." not in s["text"]["div"] for s in sections.values())
    checked = fhir_validate(tmp_path, "empty-reason", {k: v for k, v in document.items() if k != "meta"})
    assert checked.returncode == 0, checked.stdout + checked.stderr
    stu3 = _by_profile(_itk3(client, "send-document", "SendDocument-ConsultationReport"))[f"{CARECONNECT}CareConnect-Composition-1"]
    empty = [s for s in stu3["section"] if s.get("emptyReason")]
    assert empty and all(s["emptyReason"]["coding"][0]["system"] == "http://hl7.org/fhir/list-empty-reason" for s in empty)
