"""The ITK3 form of a letter, rendered at the MESH edge: FHIR STU3 (CareConnect), XML (nhs-standards.md §4).

Two forms, from the one canonical R4 document Bundle and its PDF:
- GP Connect **Send Document** (§4.3): message Bundle, `MessageHeader.event` ITK007C, handling
  specification (BusAck and InfAck requested, RecipientType FA, MessageDefinition, SenderReference,
  LocalExtension), the sender's header Organization, and an ITK document Bundle whose
  CareConnect Composition (type 371531000) carries the PDF as a Binary in its first section.
- Transfer of Care **MH eDischarge** (§4.2): the same envelope with event ITK004D and the PRSB
  headings as sections (mandatory: allergies, clinical summary, GP practice, patient demographics,
  person completing record), each with its SNOMED section code.

Ids are derived from the delivery id, and the timestamp is the letter's, so rendering again for
a re-send gives the same message (the receiver recognises it by MessageHeader id and MESH local id).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from fhir.resources.STU3.bundle import Bundle as Stu3Bundle

from common import codes
from fhir_mapping.ids import resource_id

__all__ = [
    "ItkContext",
    "render_itk3",
    "itk3_message_json",
    "message_header_id",
    "ITK_EVENT_SYSTEM",
    "ITK_HANDLING",
    "MH_HEADINGS",
    "ITK_RESPONSE_CODES",
    "STU3_SYSTEMS",
]

STU3 = "https://fhir.nhs.uk/STU3/StructureDefinition/"
CARECONNECT = "https://fhir.hl7.org.uk/STU3/StructureDefinition/"
ITK_EVENT_SYSTEM = "https://fhir.nhs.uk/STU3/CodeSystem/ITK-MessageEvent-2"
ITK_HANDLING = f"{STU3}Extension-ITK-MessageHandling-2"
ITK_RECIPIENT_TYPE = "https://fhir.nhs.uk/STU3/CodeSystem/ITK-RecipientType-1"
ITK_RESPONSE_CODES = "https://fhir.nhs.uk/STU3/CodeSystem/ITK-ResponseCodes-1"
NHS_NUMBER_STATUS = f"{CARECONNECT}Extension-CareConnect-NHSNumberVerificationStatus-1"
NHS_NUMBER_STATUS_CODES = "https://fhir.hl7.org.uk/STU3/CodeSystem/CareConnect-NHSNumberVerificationStatus-1"
RFC4122 = "https://tools.ietf.org/html/rfc4122"
# R4 terminology URLs -> their STU3 form (issue 34: an STU3 payload uses STU3 code systems)
STU3_SYSTEMS = {
    "http://terminology.hl7.org/CodeSystem/v3-ActCode": "http://hl7.org/fhir/v3/ActCode",
    "http://terminology.hl7.org/CodeSystem/v3-ParticipationType": "http://hl7.org/fhir/v3/ParticipationType",
    "http://terminology.hl7.org/CodeSystem/v2-0203": "http://hl7.org/fhir/v2/0203",
    "http://terminology.hl7.org/CodeSystem/list-empty-reason": "http://hl7.org/fhir/list-empty-reason",
}
XHTML = "http://www.w3.org/1999/xhtml"


def _stu3_coding(coding: dict[str, Any]) -> dict[str, Any]:
    return coding | {"system": STU3_SYSTEMS.get(str(coding.get("system")), coding.get("system"))}


# form -> (event code, event display, MessageDefinition) : §4.3 (GPCM SD-039..055); §4.2 (MHTOC) with ITK004D
# "ITK Mental Health eDischarge" from two ITK3 event tables found in public code (index file ids 97614178, 54347306782)
_FORMS = {
    "send-document": (
        "ITK007C",
        "ITK GP Connect Send Document",
        "https://fhir.nhs.uk/STU3/MessageDefinition/ITK-GPConnectSendDocument-MessageDefinition-1",
    ),
    "mh-edischarge": (
        "ITK004D",
        "ITK Mental Health eDischarge",
        "https://fhir.nhs.uk/STU3/MessageDefinition/ITK-MH-eDischarge-MessageDefinition-Instance-1",
    ),
}

# PRSB mental health discharge headings (MHTOC explore_headings.md, nhs-standards.md §4.2): (title, SNOMED section code, mandatory)
MH_HEADINGS: dict[str, tuple[str, str, bool]] = {
    "allergies": ("Allergies and adverse reactions", "886921000000105", True),
    "clinical-summary": ("Clinical summary", "887181000000106", True),
    "gp-practice": ("GP practice", "886711000000101", True),
    "patient-demographics": ("Patient demographics", "886731000000109", True),
    "person-completing-record": ("Person completing record", "887231000000104", True),
    "assessment-scales": ("Assessment scales", "887141000000103", False),
    "plan": ("Plan and requested actions", "887201000000105", False),
    "safety-alerts": ("Safety alerts", "886931000000107", False),
    "discharge-details": ("Discharge details", "886811000000106", False),
}
# canonical section code -> MH heading
_MH_FROM_CANONICAL = {
    "reason-for-contact": "clinical-summary",
    "assessment": "clinical-summary",
    "outcome-measures": "assessment-scales",
    "plan": "plan",
    "safety-risk": "safety-alerts",
    "follow-up": "discharge-details",
}


@dataclass(frozen=True)
class ItkContext:
    delivery_id: str
    form: str  # send-document | mh-edischarge
    local_extension: str | None
    sender_mailbox: str  # MessageHeader.source.endpoint
    sender_ods: str  # the header Organization when the letter names none
    gp_ods: str | None  # the recipient GP practice (MH eDischarge "GP practice" heading)


def _div(*paragraphs: str) -> dict[str, str]:
    from html import escape

    body = "".join(f"<p>{escape(p)}</p>" for p in paragraphs) or "<p>Nothing recorded.</p>"
    return {"status": "generated", "div": f'<div xmlns="{XHTML}">{body}</div>'}


def _resources(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["resource"]["resourceType"] + "/" + e["resource"]["id"]: e["resource"] for e in document["entry"]}


def _patient(patient: dict[str, Any]) -> dict[str, Any]:
    identifiers = []
    for ident in patient.get("identifier", []):
        item = {"system": ident["system"], "value": ident["value"]}
        if ident.get("system") == codes.NHS_NUMBER:
            # we do not trace NHS numbers against PDS: "02 Number present but not traced"
            item["extension"] = [
                {
                    "url": NHS_NUMBER_STATUS,
                    "valueCodeableConcept": {
                        "coding": [{"system": NHS_NUMBER_STATUS_CODES, "code": "02", "display": "Number present but not traced"}]
                    },
                }
            ]
        identifiers.append(item)
    out: dict[str, Any] = {
        "resourceType": "Patient",
        "id": patient["id"],
        "meta": {"profile": [f"{CARECONNECT}CareConnect-Patient-1"]},
        "identifier": identifiers,
    }
    for key in ("name", "gender", "birthDate", "address"):
        if patient.get(key):
            out[key] = patient[key]
    return out


def _organization(org: dict[str, Any], profile: str) -> dict[str, Any]:
    out = {"resourceType": "Organization", "id": org["id"], "meta": {"profile": [profile]}}
    if org.get("identifier"):
        out["identifier"] = org["identifier"]
    if org.get("name"):
        out["name"] = org["name"]
    if org.get("telecom"):  # the sender's telephone (GPCM-SD-CS-035)
        out["telecom"] = org["telecom"]
    return out


def _ods_org(ods: str, profile: str, name: str | None = None) -> dict[str, Any]:
    org = {
        "resourceType": "Organization",
        "id": resource_id("Organization", codes.ODS_ORG, ods),
        "meta": {"profile": [profile]},
        "identifier": [{"system": codes.ODS_ORG, "value": ods}],
    }
    if name:
        org["name"] = name
    return org


def _encounter(encounter: dict[str, Any], patient_url: str) -> dict[str, Any]:
    out = {
        "resourceType": "Encounter",
        "id": encounter["id"],
        "meta": {"profile": [f"{CARECONNECT}CareConnect-Encounter-1"]},
        "status": encounter.get("status", "finished"),
        "subject": {"reference": patient_url},
    }
    if encounter.get("class"):
        out["class"] = _stu3_coding(encounter["class"])
    if encounter.get("period"):
        out["period"] = encounter["period"]
    return out


def _practitioner(practitioner: dict[str, Any]) -> dict[str, Any]:
    """The letter's author as CareConnect-Practitioner-1 (GPCM-SD-121): the clinician named in the operation."""
    out: dict[str, Any] = {
        "resourceType": "Practitioner",
        "id": practitioner["id"],
        "meta": {"profile": [f"{CARECONNECT}CareConnect-Practitioner-1"]},
        "name": practitioner.get("name") or [],
    }
    if practitioner.get("identifier"):  # the SDS user id or the professional registration number, where given
        out["identifier"] = practitioner["identifier"]
    return out


def render_itk3(document: dict[str, Any], pdf: bytes, context: ItkContext) -> bytes:
    """The ITK3 message (STU3 XML) for one delivery of the letter `document` (canonical R4) with its `pdf`."""
    xml = _message(document, pdf, context).model_dump_xml()
    return xml if isinstance(xml, bytes) else str(xml).encode("utf-8")


def itk3_message_json(document: dict[str, Any], pdf: bytes, context: ItkContext) -> dict[str, Any]:
    """The same message as STU3 JSON (for tests and inspection)."""
    return _message(document, pdf, context).model_dump(mode="json", exclude_none=True, by_alias=True)


def _message(document: dict[str, Any], pdf: bytes, context: ItkContext) -> Stu3Bundle:
    event, event_display, definition = _FORMS[context.form]
    resources = _resources(document)
    composition = document["entry"][0]["resource"]
    letter_id = document["id"]
    timestamp = document["timestamp"]
    patient = _patient(resources[_key(composition["subject"], "Patient")])
    canonical_sender = resources[_key(composition["custodian"], "Organization")]
    sender_ids = canonical_sender.get("identifier") or []
    sender_ods = sender_ids[0]["value"] if sender_ids else context.sender_ods
    custodian = _organization(canonical_sender, f"{CARECONNECT}CareConnect-Organization-1")
    if not sender_ids:
        custodian["identifier"] = [{"system": codes.ODS_ORG, "value": sender_ods}]
    # the ITK3 header Organization's profile is NHS England's (fhir.nhs.uk), as in the ITK3 bundle structure (issue 34)
    header_org = _ods_org(sender_ods, f"{STU3}CareConnect-ITK-Header-Organization-1", custodian.get("name"))
    header_org["id"] = resource_id("Organization", f"itk-header/{context.delivery_id}", sender_ods)
    # the author is the clinician (GPCM-SD-121); a letter nobody signed is the service's own (never a Device)
    written_by = str(composition["author"][0]["reference"]).removeprefix("urn:uuid:").split("/")[-1]
    signer = next((r for r in resources.values() if r["resourceType"] == "Practitioner" and r["id"] == written_by), None)
    author = _practitioner(signer) if signer else custodian
    binary = {
        "resourceType": "Binary",
        "id": resource_id("Binary", f"Bundle/{letter_id}", "pdf"),
        "meta": {"profile": [f"{STU3}ITK-Attachment-Binary-1"]},
        "contentType": "application/pdf",
        "content": base64.b64encode(pdf).decode("ascii"),
    }
    encounter_ref = composition.get("encounter")
    encounter = _encounter(resources[_key(encounter_ref, "Encounter")], url(patient)) if encounter_ref else None
    inner_entries: list[dict[str, Any]] = []
    stu3_composition: dict[str, Any] = {
        "resourceType": "Composition",
        "id": composition["id"],
        "identifier": {"system": RFC4122, "value": letter_id},
        "status": "final",
        "type": composition["type"],
        "date": composition["date"],
        "confidentiality": "N",
        "title": composition["title"],
        "text": {"status": "generated", "div": composition["text"]["div"]},
        "subject": {"reference": url(patient)},
        "author": [{"reference": url(author)}],
        "custodian": {"reference": url(custodian)},
    }
    if encounter:
        stu3_composition["encounter"] = {"reference": url(encounter)}
    for relation in composition.get("relatesTo", []):
        stu3_composition.setdefault("relatesTo", []).append({"code": "replaces", "targetIdentifier": relation["targetIdentifier"]})
    extra: list[dict[str, Any]] = []
    if context.form == "send-document":
        stu3_composition["meta"] = {"profile": [f"{CARECONNECT}CareConnect-Composition-1"]}
        # the PDF first (GPCM-SD-019..022), then each canonical section as readable text
        sections = [{"title": composition["title"], "entry": [{"reference": url(binary)}]}]
        sections += [
            {"title": s["title"], "text": {"status": "generated", "div": s["text"]["div"]}}
            | ({"emptyReason": {"coding": [_stu3_coding(c) for c in s["emptyReason"]["coding"]]}} if s.get("emptyReason") else {})
            for s in composition["section"]
        ]
    else:
        stu3_composition["meta"] = {"profile": [f"{CARECONNECT}CareConnect-ITK-MH-Composition-1"]}
        gp = _ods_org(context.gp_ods, f"{CARECONNECT}CareConnect-Organization-1") if context.gp_ods else None
        extra += [gp] if gp else []
        sections = _mh_sections(composition, patient, custodian, gp, binary, author)
    stu3_composition["section"] = sections
    inner = [
        stu3_composition,
        binary,
        patient,
        custodian,
        *([author] if author is not custodian else []),
        *([encounter] if encounter else []),
    ]
    inner += extra
    inner_entries = [{"fullUrl": url(r), "resource": r} for r in inner]
    inner_bundle = {
        "resourceType": "Bundle",
        "id": letter_id,
        "meta": {"profile": [f"{STU3}ITK-Document-Bundle-1"]},
        "identifier": {"system": RFC4122, "value": letter_id},
        "type": "document",
        "entry": inner_entries,
    }
    handling = [
        {"url": "BusAckRequested", "valueBoolean": True},
        {"url": "InfAckRequested", "valueBoolean": True},
        {"url": "RecipientType", "valueCoding": {"system": ITK_RECIPIENT_TYPE, "code": "FA", "display": "For Action"}},
        {"url": "MessageDefinition", "valueReference": {"reference": definition}},
        {"url": "SenderReference", "valueString": letter_id},
    ]
    if context.local_extension:
        handling.append({"url": "LocalExtension", "valueString": context.local_extension})
    header = {
        "resourceType": "MessageHeader",
        "id": message_header_id(context.delivery_id),
        "meta": {"profile": [f"{STU3}ITK-MessageHeader-2"]},
        "extension": [{"url": ITK_HANDLING, "extension": handling}],
        "event": {"system": ITK_EVENT_SYSTEM, "code": event, "display": event_display},
        "sender": {"reference": url(header_org)},
        "timestamp": timestamp,
        "source": {"endpoint": context.sender_mailbox},
        "focus": [{"reference": url(inner_bundle)}],
    }
    message_id = resource_id("Bundle", "itk3-message", context.delivery_id)
    message = {
        "resourceType": "Bundle",
        "id": message_id,
        "meta": {"profile": [f"{STU3}ITK-Message-Bundle-1"]},
        "identifier": {"system": RFC4122, "value": message_id},
        "type": "message",
        "entry": [{"fullUrl": url(r), "resource": r} for r in (header, header_org, inner_bundle)],
    }
    return Stu3Bundle.model_validate(message)


def url(resource: dict[str, Any]) -> str:
    return f"urn:uuid:{resource['id']}"


def message_header_id(delivery_id: str) -> str:
    return resource_id("MessageHeader", "itk3", delivery_id)


def _key(reference: dict[str, Any] | None, rtype: str) -> str:
    """A Composition reference (urn:uuid inside the canonical Bundle) back to "Type/id"."""
    value = str((reference or {}).get("reference", ""))
    return f"{rtype}/{value.removeprefix('urn:uuid:').removeprefix(rtype + '/')}"


def _mh_sections(
    composition: dict[str, Any],
    patient: dict[str, Any],
    custodian: dict[str, Any],
    gp: dict[str, Any] | None,
    binary: dict[str, Any],
    author: dict[str, Any],
) -> list[dict[str, Any]]:
    """PRSB headings with their SNOMED codes; canonical sections folded into the heading they belong to."""
    divs: dict[str, list[str]] = {}
    for section in composition["section"]:
        heading = _MH_FROM_CANONICAL[next(c["code"] for c in section["code"]["coding"] if c["system"].endswith("/letter-section"))]
        divs.setdefault(heading, []).append(section["text"]["div"])
    name: dict[str, Any] = next(iter(patient.get("name") or []), {})
    full_name = " ".join([*name.get("given", []), name.get("family", "")]).strip()
    nhs = next((i["value"] for i in patient.get("identifier", []) if i["system"] == codes.NHS_NUMBER), "")
    sender = custodian.get("name") or custodian["identifier"][0]["value"]
    sections: list[dict[str, Any]] = []

    def add(key: str, text: dict[str, str], entries: list[dict[str, Any]] | None = None) -> None:
        title, code, _ = MH_HEADINGS[key]
        section: dict[str, Any] = {
            "title": title,
            "code": {"coding": [{"system": codes.SNOMED, "code": code, "display": title}]},
            "text": text,
        }
        if entries:
            section["entry"] = [{"reference": url(e)} for e in entries]
        sections.append(section)

    add("patient-demographics", _div(f"{full_name}, NHS Number {nhs}, born {patient.get('birthDate', 'not recorded')}"), [patient])
    add(
        "gp-practice",
        _div(f"GP practice ODS code {gp['identifier'][0]['value']}" if gp else "GP practice not known (routed by MESH GP lookup)"),
        [gp] if gp else None,
    )
    add("allergies", _div("Allergies and adverse reactions are not recorded by the sending service; none are reported here."))
    for key in ("clinical-summary", "assessment-scales", "plan", "safety-alerts", "discharge-details"):
        if key in divs:
            merged = "".join(d.split(">", 1)[1].rsplit("</div>", 1)[0] for d in divs[key])
            add(
                key, {"status": "generated", "div": f'<div xmlns="{XHTML}">{merged}</div>'}, [binary] if key == "clinical-summary" else None
            )
    person = next((n.get("text") for n in author.get("name", []) if n.get("text")), None) if author is not custodian else None
    add("person-completing-record", _div(f"{person}, {sender}" if person else sender), [author] if person else [custodian])
    return sections
