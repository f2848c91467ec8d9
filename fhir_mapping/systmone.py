"""A SystmOne contact -> FHIR R4: the contact Encounter (CTV3 coded, PC-04), a QuestionnaireResponse per
measure recorded (scored by the gateway), and the DIALOG+ care plan (PC-09: it counts, status active,
only when both the care plan MHS008 and its agreement MHS009 are recorded) and the safety plan.
"""

from __future__ import annotations

from typing import Any

from adapters.systmone import CONTACT_CODES, SystmOneContact
from common import codes
from common.datetimes import to_fhir_instant
from fhir_mapping.contacts import contact_encounter_json, contact_encounter_ref
from fhir_mapping.ids import resource_id
from fhir_mapping.measure_answers import responses_from_item_scores
from fhir_mapping.measures import MeasureCatalogue

__all__ = ["systmone_encounter", "systmone_responses", "care_plans", "SYSTMONE_CONTACT_SYSTEM", "CTV3"]

SYSTMONE_CONTACT_SYSTEM = f"{codes.GATEWAY_BASE}/Id/systmone-contact"
CTV3 = "http://read.info/ctv3"
_CS = f"{codes.GATEWAY_BASE}/CodeSystem"


def _encounter_ref(contact: SystmOneContact) -> dict[str, str]:
    return contact_encounter_ref(SYSTMONE_CONTACT_SYSTEM, contact.contact_id)


def systmone_encounter(contact: SystmOneContact, patient_ref: dict[str, str]) -> dict[str, Any]:
    return contact_encounter_json(
        system=SYSTMONE_CONTACT_SYSTEM,
        contact_id=contact.contact_id,
        when=contact.contact_time,
        status="finished",
        types=[{"system": CTV3, "code": contact.contact_code, "display": CONTACT_CODES[contact.contact_code]}],
        service="Primary care mental health service",
        patient_ref=patient_ref,
        role={"system": f"{_CS}/pcmhs-role", "code": contact.clinician_role},
        who=contact.clinician,
    )


def systmone_responses(contact: SystmOneContact, catalogue: MeasureCatalogue, patient_ref: dict[str, str]) -> list[dict[str, Any]]:
    goals = [
        {"linkId": f"gbo-goal-{i}-text", "answer": [{"valueString": text}]} for i, text in enumerate(contact.goal_texts, start=1) if text
    ]
    return responses_from_item_scores(
        catalogue,
        contact.measures,
        SYSTMONE_CONTACT_SYSTEM,
        contact.contact_id,
        contact.contact_time,
        patient_ref,
        _encounter_ref(contact),
        {"gbo": goals},
    )


def care_plans(contact: SystmOneContact, patient_ref: dict[str, str]) -> list[dict[str, Any]]:
    """PC-09: a DIALOG+ care plan is active (it counts) only with both MHS008 and MHS009; else a draft."""
    out = []
    if contact.care_plan:
        agreed = contact.care_plan_agreed
        out.append(
            _plan(
                contact,
                patient_ref,
                "dialog-plus",
                "DIALOG+ care plan (MHSDS MHS008)",
                "active" if agreed else "draft",
                contact.care_plan_text,
                "care plan agreement (MHS009) recorded" if agreed else "no care plan agreement (MHS009) yet: does not count (PC-09)",
            )
        )
    if contact.safety_plan:
        out.append(_plan(contact, patient_ref, "safety-plan", "Safety plan", "active", contact.safety_plan_text, None))
    return out


def _plan(
    contact: SystmOneContact, patient_ref: dict[str, str], kind: str, title: str, status: str, text: str | None, note: str | None
) -> dict[str, Any]:
    plan: dict[str, Any] = {
        "resourceType": "CarePlan",
        "id": resource_id("CarePlan", SYSTMONE_CONTACT_SYSTEM, f"{contact.contact_id}#{kind}"),
        "meta": {"profile": [f"{codes.UKCORE}CarePlan"]},
        "status": status,
        "intent": "plan",
        "category": [{"coding": [{"system": f"{_CS}/care-plan-category", "code": kind, "display": title}]}],
        "title": title,
        "subject": patient_ref,
        "encounter": _encounter_ref(contact),
        "created": to_fhir_instant(contact.contact_time),
    }
    if text:
        plan["description"] = text
    if note:
        plan["note"] = [{"text": note}]
    return plan
