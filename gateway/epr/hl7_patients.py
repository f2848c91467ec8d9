"""Who an HL7 v2 message is about: its Patient found by any of its identifiers, or a new one (issue 32).

A sender may know a patient by its local number before the NHS number is traced. The Patient is
looked up by every identifier the message carries (the NHS number and each local number, under the
system its sender profile gives that assigning authority); only when none matches is an id minted:
from the NHS number when there is one (the id every other channel gives that patient), else from the
first local number. So a Patient first known by a local number keeps its id when its NHS number
arrives, the two numbers then both name it, and nothing is duplicated. Identifiers naming two
different patients, or a local number whose patient has another NHS number, are refused (AE PID-3):
merging two records is a person's decision, not the gateway's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from adapters.hl7v2 import Hl7Error, Hl7Message
from common import codes
from fhir_mapping.ids import resource_id
from gateway.epr.rules.sender_schema import SenderProfile
from gateway.platform.store.repo import find_by_identifier

__all__ = ["PatientIdentity", "identity_of", "find_patient", "NHS_NUMBER_STATUS_EXTENSION", "NHS_NUMBER_STATUS_SYSTEM"]

NHS_NUMBER_STATUS_EXTENSION = "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus"
NHS_NUMBER_STATUS_SYSTEM = "https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland"
_STATUS_DISPLAY = {  # shared/research/nhs-standards.md (SIMP UK Core code system)
    "01": "Number present and verified",
    "02": "Number present but not traced",
    "03": "Trace required",
    "04": "Trace attempted - No match or multiple match found",
    "05": "Trace needs to be resolved - (NHS Number or patient detail conflict)",
    "06": "Trace in progress",
    "07": "Number not present and trace not required",
    "08": "Trace postponed (baby under six weeks old)",
}


@dataclass(frozen=True)
class PatientIdentity:
    """The FHIR identifiers a message gives its patient (the NHS number first), and the id a new Patient gets."""

    identifiers: tuple[dict[str, Any], ...]
    new_id: str


def identity_of(message: Hl7Message, profile: SenderProfile) -> PatientIdentity:
    identifiers: list[dict[str, Any]] = []
    nhs = message.patient.nhs_number
    if nhs:
        identifier: dict[str, Any] = {"system": codes.NHS_NUMBER, "value": nhs}
        if message.nhs_status:
            coding = {"system": NHS_NUMBER_STATUS_SYSTEM, "code": message.nhs_status, "display": _STATUS_DISPLAY[message.nhs_status]}
            identifier["extension"] = [{"url": NHS_NUMBER_STATUS_EXTENSION, "valueCodeableConcept": {"coding": [coding]}}]
        identifiers.append(identifier)
    seen = set()
    for local in message.local_numbers:
        key = (profile.system_for(local.authority), local.value)
        if key not in seen:
            seen.add(key)
            identifiers.append({"system": key[0], "value": key[1]})
    first = identifiers[0]  # the parser refuses a PID-3 with neither an NHS number nor a local number
    return PatientIdentity(tuple(identifiers), resource_id("Patient", first["system"], first["value"]))


def find_patient(session: Session, identity: PatientIdentity, control_id: str) -> dict[str, Any] | None:
    """The stored Patient any of these identifiers names (None if none does); AE PID-3 if they name two, or if the
    patient a local number names already has a different NHS number."""
    found: dict[str, dict[str, Any]] = {}
    for identifier in identity.identifiers:
        for patient in find_by_identifier(session, "Patient", identifier["system"], identifier["value"]):
            found[patient["id"]] = patient
    if len(found) > 1:
        raise Hl7Error("AE", "PID-3: these identifiers name two different patients here; merge them first", "PID", 3, 205, control_id)
    if not found:
        return None
    (patient,) = found.values()
    sent = next((i["value"] for i in identity.identifiers if i["system"] == codes.NHS_NUMBER), None)
    stored = {i.get("value") for i in patient.get("identifier", []) if i.get("system") == codes.NHS_NUMBER}
    if sent and stored and sent not in stored:
        raise Hl7Error("AE", "PID-3: the local number's patient has a different NHS number here", "PID", 3, 205, control_id)
    return patient
