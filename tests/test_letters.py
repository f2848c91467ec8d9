"""Letters as documents (issue 7): the request contract, the canonical R4 document, the PDF, the ITK3 forms."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import pytest
from pypdf import PdfReader

from fhir_mapping.letters.itk3 import MH_HEADINGS, ItkContext, itk3_message_json
from tests.conftest import issues
from tests.letter_helpers import NOTES, ODS, completed_case, fhir_validate, letter_request, outbox, pcmis_contacts

STU3 = "https://fhir.nhs.uk/STU3/StructureDefinition/"
CARECONNECT = "https://fhir.hl7.org.uk/STU3/StructureDefinition/"


def pdf_text(letter: dict[str, Any]) -> str:
    data = next(c["attachment"]["data"] for c in letter["content"] if c["attachment"]["contentType"] == "application/pdf")
    reader = PdfReader(io.BytesIO(base64.b64decode(data)))
    return " ".join((page.extract_text() or "") for page in reader.pages)


def the_letter(client) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:  # type: ignore[no-untyped-def]
    (delivery,) = outbox(client)
    letter = client.get(f"/fhir/{delivery['letter']}").json()
    document = client.get(f"/fhir/{delivery['document']}").json()
    return delivery, letter, document


def latest_scores(client, patient_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    """The newest PHQ-9 and GAD-7 total Observations (LOINC 44261-6, 70274-6)."""
    out = []
    for code in ("44261-6", "70274-6"):
        found = client.get("/fhir/Observation", params={"patient": patient_id, "code": f"http://loinc.org|{code}"}).json()["entry"]
        out.append(f"Observation/{found[-1]['resource']['id']}")
    return out


def test_completed_case_queues_its_consultation_report_with_the_completion_CAS_13(client) -> None:
    """CAS-13: completion -> a consultation report for the GP: request, document, PDF and delivery row, one transaction."""
    task = completed_case(client)
    delivery, letter, document = the_letter(client)
    assert (delivery["letter_type"], delivery["recipient_kind"], delivery["recipient"], delivery["status"]) == (
        "cas-consultation-report",
        "gp",
        "L81001",
        "pending",
    )
    assert letter["status"] == "current" and letter["subject"] == task["for"]
    assert document["type"] == "document" and document["entry"][0]["resource"]["resourceType"] == "Composition"
    (request,) = client.get("/fhir/CommunicationRequest", params={"status": "active"}).json()["entry"]
    assert request["resource"]["reasonCode"][0]["coding"][0]["code"] == "CAS-13"
    steps = [p["valueString"] for p in client.get(f"/fhir/Task/{task['id']}/$explain").json()["parameter"] if p["name"] == "step"]
    assert any("gp-letter (CAS-13)" in step and "consultation report queued" in step for step in steps)


def test_letter_document_has_every_section_with_a_narrative_and_passes_the_validator(client, tmp_path) -> None:
    """The canonical R4 document: Composition sections (reason, assessment, measures, plan, risk, follow-up), XHTML each."""
    completed_case(client)
    _, _, document = the_letter(client)
    composition = document["entry"][0]["resource"]
    assert [s["title"] for s in composition["section"]] == [
        "Reason for contact",
        "Assessment",
        "Outcome measures",
        "Plan",
        "Safety and risk",
        "Follow-up",
    ]
    assert all(s["text"]["div"].startswith('<div xmlns="http://www.w3.org/1999/xhtml">') for s in composition["section"])
    assessment = composition["section"][1]
    assert NOTES in assessment["text"]["div"].replace("&#39;", "'")
    referenced = {e["fullUrl"] for e in document["entry"]}
    assert all(ref["reference"] in referenced for s in composition["section"] for ref in s.get("entry", []))
    assert {"Patient", "Encounter", "DocumentReference", "ServiceRequest", "Task", "Organization"} <= {
        e["resource"]["resourceType"] for e in document["entry"]
    }
    checked = fhir_validate(tmp_path, "document", document)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_pdf_rendition_is_made_from_the_type_template_and_holds_the_notes(client) -> None:
    completed_case(client)
    _, letter, _ = the_letter(client)
    text = " ".join(pdf_text(letter).split())
    assert "Consultation report" in text and "NHS number: 999 000 0018" in text and "Alex Testpatient" in text
    assert "after contacting NHS 111" in text  # the intro from templates/types/cas-consultation-report.html.j2
    assert " ".join(NOTES.split()) in text


def test_tt_progress_letter_reports_the_latest_phq9_and_gad7_TT_14(client, tmp_path) -> None:
    """TT-14: a progress update with the latest PHQ-9 and GAD-7, requested by the contract (as the pathway rules do)."""
    patient_id = pcmis_contacts(client)
    scores = latest_scores(client, patient_id)
    request = letter_request("tt-progress-1", "tt-progress", patient_id, scores, lines=("Continuing step 2 guided self-help.",))
    reply = client.post("/fhir/CommunicationRequest", content=json.dumps(request))
    assert reply.status_code == 201, reply.text
    letter = reply.json()
    document = client.get(f"/fhir/Bundle/{letter['id']}").json()
    measures = document["entry"][0]["resource"]["section"][2]
    assert "PHQ-9" in measures["text"]["div"] and "GAD-7" in measures["text"]["div"]
    assert "<td>4</td>" in measures["text"]["div"] and "<td>3</td>" in measures["text"]["div"]  # 16 Nov: PHQ-9 4, GAD-7 3
    assert "Continuing step 2 guided self-help." in document["entry"][0]["resource"]["section"][3]["text"]["div"]
    assert "Progress update" in pdf_text(letter)
    checked = fhir_validate(tmp_path, "tt-progress", document)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_same_request_again_is_the_same_letter_and_a_changed_one_replaces_it(client) -> None:
    patient_id = pcmis_contacts(client)
    scores = latest_scores(client, patient_id)
    request = letter_request("tt-progress-2", "tt-progress", patient_id, scores)
    first = client.post("/fhir/CommunicationRequest", content=json.dumps(request)).json()
    again = client.post("/fhir/CommunicationRequest", content=json.dumps(request)).json()
    assert again["id"] == first["id"] and len(outbox(client)) == 1
    changed = request | {"payload": [{"contentString": "Amended: next review in 4 weeks."}]}
    second = client.post("/fhir/CommunicationRequest", content=json.dumps(changed)).json()
    assert second["relatesTo"] == [{"code": "replaces", "target": {"reference": f"DocumentReference/{first['id']}"}}]
    assert client.get(f"/fhir/DocumentReference/{first['id']}").json()["status"] == "superseded"
    assert sorted(d["status"] for d in outbox(client)) == ["pending", "superseded"]
    composition = client.get(f"/fhir/Bundle/{second['id']}").json()["entry"][0]["resource"]
    assert composition["relatesTo"][0]["targetIdentifier"]["value"] == first["id"]


def _broken(request: dict[str, Any], change: str) -> dict[str, Any]:
    broken = json.loads(json.dumps(request))
    if change == "no-category":
        del broken["category"]
    elif change == "unknown-type":
        broken["category"][0]["coding"][0]["code"] = "birthday-card"
    elif change == "subject-not-patient":
        broken["subject"] = {"reference": "Group/1"}
    elif change == "no-recipient":
        del broken["recipient"]
    elif change == "recipient-without-ods":
        broken["recipient"] = [{"display": "Somewhere"}]
    elif change == "about-unknown":
        broken["about"] = [{"reference": "Encounter/00000000-0000-0000-0000-000000000000"}]
    elif change == "about-wrong-type":
        broken["about"] = [{"reference": "Patient/x"}]
    elif change == "no-rule":
        broken["reasonCode"] = [{"text": "because"}]
    elif change == "bad-rule-id":
        broken["reasonCode"][0]["coding"][0]["code"] = "TT14"
    elif change == "no-offset":
        broken["authoredOn"] = "2026-11-23T12:00:00"
    elif change == "draft":
        broken["status"] = "draft"
    elif change == "empty-line":
        broken["payload"] = [{"contentString": " "}]
    return broken


@pytest.mark.parametrize(
    ("change", "status", "element"),
    [
        ("no-category", 400, "CommunicationRequest.category[0].coding[0].system"),
        ("unknown-type", 422, "CommunicationRequest.category[0].coding[0].code"),
        ("subject-not-patient", 400, "CommunicationRequest.subject.reference"),
        ("no-recipient", 400, "CommunicationRequest.recipient"),
        ("recipient-without-ods", 400, "CommunicationRequest.recipient[0].identifier"),
        ("about-unknown", 404, "CommunicationRequest.about"),
        ("about-wrong-type", 400, "CommunicationRequest.about[0].reference"),
        ("no-rule", 400, "CommunicationRequest.reasonCode"),
        ("bad-rule-id", 400, "CommunicationRequest.reasonCode.coding.code"),
        ("no-offset", 400, "CommunicationRequest.authoredOn"),
        ("draft", 400, "CommunicationRequest.status"),
        ("empty-line", 400, "CommunicationRequest.payload[0].contentString"),
    ],
)
def test_malformed_letter_request_is_refused_naming_the_element_and_stores_nothing(client, change: str, status: int, element: str) -> None:
    patient_id = pcmis_contacts(client)
    request = letter_request("bad-1", "tt-discharge", patient_id, latest_scores(client, patient_id))
    reply = client.post("/fhir/CommunicationRequest", content=json.dumps(_broken(request, change)))
    assert reply.status_code == status, reply.text
    assert element in [where for severity, where, _ in issues(reply.json()) if severity == "error"]
    assert outbox(client) == [] and client.get("/fhir/CommunicationRequest").json()["total"] == 0


def _paths(resource: dict[str, Any], required: list[str]) -> list[str]:
    """The required paths missing from `resource` (dotted; a list is satisfied by its first item)."""
    missing = []
    for path in required:
        node: Any = resource
        for part in path.split("."):
            node = node[0] if isinstance(node, list) and node else node
            node = node.get(part) if isinstance(node, dict) else None
        if node in (None, [], ""):
            missing.append(path)
    return missing


def _itk3(client, form: str, local_extension: str | None) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    delivery, letter, document = the_letter(client)
    pdf = base64.b64decode(letter["content"][0]["attachment"]["data"])
    context = ItkContext(delivery["id"], form, local_extension, "X26ABC1", "RVN", "L81001")
    return itk3_message_json({k: v for k, v in document.items() if k != "meta"}, pdf, context)


def _by_profile(bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {bundle["meta"]["profile"][0]: bundle}
    for entry in bundle["entry"]:
        resource = entry["resource"]
        out[resource["meta"]["profile"][0]] = resource
        if resource["resourceType"] == "Bundle":
            out |= _by_profile(resource)
    return out


# required elements of the profiles the ITK3 Send Document uses (nhs-standards.md §4.1, §4.3: ITK3, GPCM SD-001..124)
SEND_DOCUMENT_REQUIRED = {
    f"{STU3}ITK-Message-Bundle-1": ["id", "identifier.value", "type", "entry"],
    f"{STU3}ITK-MessageHeader-2": [
        "id", "extension.url", "event.system", "event.code", "sender.reference", "timestamp", "source.endpoint", "focus.reference",
    ],
    f"{STU3}CareConnect-ITK-Header-Organization-1": ["id", "identifier.system", "identifier.value"],
    f"{STU3}ITK-Document-Bundle-1": ["id", "identifier.value", "type", "entry"],
    f"{CARECONNECT}CareConnect-Composition-1": [
        "id", "identifier.value", "status", "type.coding.code", "subject.reference", "date", "author.reference", "title",
        "confidentiality", "custodian.reference", "section.entry.reference",
    ],
    f"{STU3}ITK-Attachment-Binary-1": ["id", "contentType", "content"],
    f"{CARECONNECT}CareConnect-Patient-1": [
        "id", "identifier.system", "identifier.value", "identifier.extension.valueCodeableConcept.coding.code",
    ],
    f"{CARECONNECT}CareConnect-Organization-1": ["id", "identifier.value", "name"],
    f"{CARECONNECT}CareConnect-Practitioner-1": ["id", "name.use", "name.family"],
}  # fmt: skip


def test_itk3_send_document_has_the_required_elements_of_its_profiles(client) -> None:
    """GP Connect Send Document: ITK007C, handling spec (BusAck, InfAck, RecipientType FA), PDF first, 371531000."""
    completed_case(client)
    message = _itk3(client, "send-document", "SendDocument-ConsultationReport")
    profiles = _by_profile(message)
    for profile, required in SEND_DOCUMENT_REQUIRED.items():
        assert profile in profiles, profile
        assert _paths(profiles[profile], required) == [], profile
    header = profiles[f"{STU3}ITK-MessageHeader-2"]
    assert header["event"] == {
        "system": "https://fhir.nhs.uk/STU3/CodeSystem/ITK-MessageEvent-2",
        "code": "ITK007C",
        "display": "ITK GP Connect Send Document",
    }
    handling = {e["url"]: e for e in header["extension"][0]["extension"]}
    assert handling["BusAckRequested"]["valueBoolean"] is True and handling["InfAckRequested"]["valueBoolean"] is True
    assert handling["RecipientType"]["valueCoding"]["code"] == "FA"
    assert handling["LocalExtension"]["valueString"] == "SendDocument-ConsultationReport"
    assert header["source"]["endpoint"] == "X26ABC1" and message["entry"][0]["resource"] is header
    composition = profiles[f"{CARECONNECT}CareConnect-Composition-1"]
    assert composition["type"]["coding"][0]["code"] == "371531000"
    binary = profiles[f"{STU3}ITK-Attachment-Binary-1"]
    assert composition["section"][0]["entry"][0]["reference"] == f"urn:uuid:{binary['id']}"  # the primary attachment first
    assert base64.b64decode(binary["content"]).startswith(b"%PDF")
    inner = message["entry"][2]["resource"]
    assert header["focus"][0]["reference"] == message["entry"][2]["fullUrl"] and inner["entry"][0]["resource"] is composition


def test_mh_discharge_renders_as_mh_edischarge_with_the_prsb_headings(client) -> None:
    """MH eDischarge (§4.2): PRSB headings with their SNOMED section codes; the mandatory ones always present."""
    completed_case(client)
    message = _itk3(client, "mh-edischarge", None)
    header = message["entry"][0]["resource"]
    assert header["event"]["code"] == "ITK004D"
    composition = _by_profile(message)[f"{CARECONNECT}CareConnect-ITK-MH-Composition-1"]
    codes = {s["code"]["coding"][0]["code"] for s in composition["section"]}
    mandatory = {code for _, code, required in MH_HEADINGS.values() if required}
    assert mandatory <= codes
    assert all(s["text"]["div"].startswith('<div xmlns="http://www.w3.org/1999/xhtml">') for s in composition["section"])
    gp = next(s for s in composition["section"] if s["title"] == "GP practice")
    assert "L81001" in gp["text"]["div"]
    assert any(
        e["resource"].get("identifier", [{}])[0].get("value") == "L81001"
        for e in message["entry"][2]["resource"]["entry"]
        if e["resource"]["resourceType"] == "Organization"
    )
    assert ODS
