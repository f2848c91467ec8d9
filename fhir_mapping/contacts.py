"""A clinical contact recorded in another system (PCMIS, SystmOne) as a FHIR Encounter, one shape for all."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from common import codes
from common.datetimes import to_fhir_instant
from fhir_mapping.ids import resource_id

__all__ = ["contact_encounter_ref", "contact_encounter_json"]


def contact_encounter_ref(system: str, contact_id: str) -> dict[str, str]:
    return {"reference": f"Encounter/{resource_id('Encounter', system, contact_id)}"}


def contact_encounter_json(
    *,
    system: str,
    contact_id: str,
    when: datetime,
    status: str,
    types: list[dict[str, Any]],
    service: str,
    patient_ref: dict[str, str],
    role: dict[str, str],
    who: str,
) -> dict[str, Any]:
    """The Encounter of contact `contact_id` (deterministic id from the source system), ambulatory, at `when`."""
    at = to_fhir_instant(when)
    return {
        "resourceType": "Encounter",
        "id": resource_id("Encounter", system, contact_id),
        "meta": {"profile": [f"{codes.UKCORE}Encounter"]},
        "identifier": [{"system": system, "value": contact_id}],
        "status": status,
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB", "display": "ambulatory"},
        "type": [{"coding": [coding]} for coding in types],
        "serviceType": {"text": service},
        "subject": patient_ref,
        "participant": [{"type": [{"coding": [role]}], "individual": {"display": who}}],
        "period": {"start": at, "end": at},
    }
