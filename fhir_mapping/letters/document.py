"""A letter as a canonical FHIR R4 document: Composition (sections with XHTML narratives) + what it reports.

Sections (the letter-section code system, with the national heading where one matches):
reason for contact, assessment, outcome measures (scores), plan, safety and risk, follow-up.
What each says is worked out once in `view.py` (`SectionView`); the same view renders the section
narrative here and the PDF (`pdf.py`), so the two cannot disagree.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from common import codes
from common.datetimes import to_fhir_instant
from fhir_mapping.bundles import bundle_of
from fhir_mapping.ids import resource_id
from fhir_mapping.letters.request import LetterRequest
from fhir_mapping.letters.types import LETTER_TYPE_SYSTEM
from fhir_mapping.letters.view import (
    SECTIONS,
    LetterView,
    SectionView,
    letter_view,
    long_date,
    nhs_number,
    nhs_number_for_reading,
    patient_name,
    plain_text,
    templates,
)

__all__ = [
    "LetterView",
    "SectionView",
    "letter_id_for",
    "letter_view",
    "document_bundle",
    "organization",
    "practitioner",
    "LETTER_VERSION",
    "letter_version",
    "SECTION_SYSTEM",
    "RFC4122",
    "patient_name",
    "nhs_number",
    "nhs_number_for_reading",
    "long_date",
    "plain_text",
    "section_narrative",
    "templates",
]

SECTION_SYSTEM = f"{codes.GATEWAY_BASE}/CodeSystem/letter-section"
RFC4122 = "https://tools.ietf.org/html/rfc4122"
XHTML = "http://www.w3.org/1999/xhtml"
# the letter's version: 1 the original, each replacement one more (GPCM-SD-CS-006/007; the GPCM-SD-091/092)
LETTER_VERSION = f"{codes.GATEWAY_BASE}/StructureDefinition/letter-version"
# a section with nothing to say: not "nilknown" (that would assert, say, that there is no risk), only that none is recorded
EMPTY_REASON = {"system": "http://terminology.hl7.org/CodeSystem/list-empty-reason", "code": "unavailable", "display": "Unavailable"}
_TITLES = ("Dr", "Mr", "Mrs", "Ms", "Miss", "Mx", "Prof", "Professor")


def letter_id_for(request_resource: dict[str, Any]) -> str:
    """One letter per version of the request's content: the same request again is the same letter (idempotent)."""
    body = {k: v for k, v in request_resource.items() if k not in ("meta", "status", "statusReason")}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
    return resource_id("Bundle", f"CommunicationRequest/{request_resource['id']}", f"letter-{digest}")


def organization(ods: str | None, name: str | None, telephone: str | None = None) -> dict[str, Any]:
    """An Organization by ODS code (the sending service, a recipient). Never the software: a letter is the service's."""
    key = ods or f"name:{name or 'sending-service'}"
    org: dict[str, Any] = {
        "resourceType": "Organization",
        "id": resource_id("Organization", codes.ODS_ORG, key),
        "meta": {"profile": [f"{codes.UKCORE}Organization"]},
    }
    if ods:
        org["identifier"] = [{"system": codes.ODS_ORG, "value": ods}]
    org["name"] = name or (f"Organisation {ods}" if ods else "Sending service")
    if telephone:
        org["telecom"] = [{"system": "phone", "value": telephone, "use": "work"}]
    return org


def practitioner(display: str, organization_id: str) -> dict[str, Any]:
    """The clinician named in the operation that produced the letter, as its author (GPCM-SD-121 / GPCM-SD-CS-025)."""
    words = display.split()
    prefix = [words.pop(0)] if len(words) > 1 and words[0].rstrip(".") in _TITLES else []
    family = words.pop() if words else display
    name: dict[str, Any] = {"use": "official", "text": display, "family": family}
    if words:
        name["given"] = words
    if prefix:
        name["prefix"] = prefix
    return {
        "resourceType": "Practitioner",
        "id": resource_id("Practitioner", f"Organization/{organization_id}", display),
        "meta": {"profile": [f"{codes.UKCORE}Practitioner"]},
        "name": [name],
    }


def letter_version(document: dict[str, Any] | None) -> int:
    """The version a stored letter document carries (1 when it names none)."""
    composition = ((document or {}).get("entry") or [{}])[0].get("resource") or {}
    return next((int(e["valueInteger"]) for e in composition.get("extension", []) if e.get("url") == LETTER_VERSION), 1)


def section_narrative(section: SectionView) -> str:
    return templates().get_template("section.xhtml.j2").render(section=section, xmlns=XHTML).strip()


def document_bundle(
    view: LetterView,
    request: LetterRequest,
    patient: dict[str, Any],
    sender: dict[str, Any],
    resources: list[dict[str, Any]],
    now: datetime,
    replaces: str | None = None,
) -> dict[str, Any]:
    """The canonical R4 document Bundle (type document): Composition first, then everything it references."""
    letter_type = request.letter_type
    composition_id = resource_id("Composition", f"Bundle/{view.letter_id}", "composition")
    encounters = [f"Encounter/{r['id']}" for r in resources if r["resourceType"] == "Encounter"]
    # the author is the clinician named in the operation (GPCM-SD-121); the service's Organization when none was named
    author = practitioner(request.signed_by, sender["id"]) if request.signed_by else None
    composition: dict[str, Any] = {
        "resourceType": "Composition",
        "id": composition_id,
        "meta": {"profile": [f"{codes.UKCORE}Composition"]},
        "extension": [{"url": LETTER_VERSION, "valueInteger": view.version}],
        "text": {
            "status": "generated",
            "div": templates().get_template("composition.xhtml.j2").render(view=view, xmlns=XHTML).strip(),
        },
        "identifier": {"system": RFC4122, "value": view.letter_id},
        "status": "final",
        "type": {
            "coding": [{"system": codes.SNOMED, "code": letter_type.composition_type.code, "display": letter_type.composition_type.display}]
        },
        "category": [{"coding": [{"system": LETTER_TYPE_SYSTEM, "code": letter_type.code, "display": letter_type.description}]}],
        "subject": {"reference": f"Patient/{patient['id']}"},
        "date": to_fhir_instant(now),
        "author": [{"reference": f"Practitioner/{author['id']}" if author else f"Organization/{sender['id']}"}],
        "title": view.composition_title,
        "confidentiality": "N",
        "custodian": {"reference": f"Organization/{sender['id']}"},
    }
    if encounters:
        composition["encounter"] = {"reference": encounters[-1]}
    if replaces:
        composition["relatesTo"] = [{"code": "replaces", "targetIdentifier": {"system": RFC4122, "value": replaces}}]
    sections = []
    for (code, title, national), view_section in zip(SECTIONS, view.sections, strict=True):
        coding = [{"system": SECTION_SYSTEM, "code": code, "display": title}] + ([national] if national else [])
        section: dict[str, Any] = {
            "title": title,
            "code": {"coding": coding},
            "text": {"status": "generated", "div": section_narrative(view_section)},
        }
        if view_section.entries:
            section["entry"] = [{"reference": ref} for ref in view_section.entries]
        elif view_section.empty:  # kept, saying why it is empty (the PDF leaves it out): nothing was recorded to report
            section["emptyReason"] = {"coding": [EMPTY_REASON]}
        sections.append(section)
    composition["section"] = sections
    included = [composition, patient, sender, *([author] if author else []), *resources]
    bundle = bundle_of([_plain(r) for r in included], "document", view.letter_id, to_fhir_instant(now))
    bundle = {"resourceType": "Bundle", "id": view.letter_id, "identifier": {"system": RFC4122, "value": view.letter_id}} | {
        k: v for k, v in bundle.items() if k not in ("resourceType", "id")
    }
    return bundle


def _plain(resource: dict[str, Any]) -> dict[str, Any]:
    """A stored resource as it goes into a document: its profile kept, our storage version left out."""
    meta = {k: v for k, v in (resource.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}
    out = {k: v for k, v in resource.items() if k != "meta"}
    return {"resourceType": out.pop("resourceType"), "id": out.pop("id"), **({"meta": meta} if meta else {}), **out}
