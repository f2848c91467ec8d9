"""A PCMIS contact -> FHIR R4: the contact Encounter, a QuestionnaireResponse per measure recorded
(PHQ-9, GAD-7, phobia scales, WSAS: the TT-11 minimum data set), employment status, and the
patient's contact preferences as a Consent (TT-15; the "do not contact my GP" wish, TT-02/TT-14).
QuestionnaireResponses are built in the measure's own answer codes, so the gateway's one scorer
scores them (fhir_mapping.scoring). Ids are deterministic from the PCMIS contact id.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from adapters.pcmis import PcmisContact
from common import codes
from common.datetimes import to_fhir_instant
from fhir_mapping.contacts import contact_encounter_json, contact_encounter_ref
from fhir_mapping.ids import resource_id
from fhir_mapping.measure_answers import responses_from_item_scores
from fhir_mapping.measures import MeasureCatalogue

__all__ = [
    "contact_encounter",
    "measure_responses",
    "employment_observation",
    "contact_consent",
    "contact_preferences",
    "consent_id",
    "PCMIS_CONTACT_SYSTEM",
    "GP_CONTACT_ACTION",
    "CLIENT_COPY_ACTION",
]

PCMIS_CONTACT_SYSTEM = f"{codes.GATEWAY_BASE}/Id/pcmis-contact"
_CS = f"{codes.GATEWAY_BASE}/CodeSystem"
GP_CONTACT_ACTION = "contact the GP practice"  # TT-02 / TT-14: read again when a letter is sent (gateway/letters/outbox/consent.py)
CLIENT_COPY_ACTION = "send the client copies of letters"  # TT-14: "cc the client unless they prefer not"


def contact_encounter(contact: PcmisContact, patient_ref: dict[str, str]) -> dict[str, Any]:
    return contact_encounter_json(
        system=PCMIS_CONTACT_SYSTEM,
        contact_id=contact.contact_id,
        when=contact.contact_time,
        status="finished" if contact.attendance == "attended" else "cancelled",
        types=[
            {"system": f"{_CS}/pcmis-appointment-type", "code": contact.appointment_type},
            {"system": f"{_CS}/pcmis-attendance", "code": contact.attendance},
        ],
        service=f"NHS Talking Therapies step {contact.step}",
        patient_ref=patient_ref,
        role={"system": f"{_CS}/iapt-therapist-role", "code": contact.therapist_role},
        who=contact.therapist,
    )


def measure_responses(contact: PcmisContact, catalogue: MeasureCatalogue, patient_ref: dict[str, str]) -> list[dict[str, Any]]:
    """One QuestionnaireResponse (FHIR JSON, our answer codes) per measure with any item recorded."""
    encounter = contact_encounter_ref(PCMIS_CONTACT_SYSTEM, contact.contact_id)
    return responses_from_item_scores(
        catalogue, contact.measures, PCMIS_CONTACT_SYSTEM, contact.contact_id, contact.contact_time, patient_ref, encounter
    )


def employment_observation(contact: PcmisContact, patient_ref: dict[str, str]) -> dict[str, Any] | None:
    """Employment status (TT-11) as recorded in PCMIS, a social-history Observation of the contact."""
    if contact.employment_status is None:
        return None
    return {
        "resourceType": "Observation",
        "id": resource_id("Observation", PCMIS_CONTACT_SYSTEM, f"{contact.contact_id}#employment"),
        "meta": {"profile": [f"{codes.UKCORE}Observation"]},
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "social-history"}]}],
        "code": {"coding": [{"system": f"{_CS}/pcmis-observation", "code": "employment-status"}], "text": "Employment status"},
        "subject": patient_ref,
        "encounter": contact_encounter_ref(PCMIS_CONTACT_SYSTEM, contact.contact_id),
        "effectiveDateTime": to_fhir_instant(contact.contact_time),
        "valueString": contact.employment_status,
    }


def contact_consent(contact: PcmisContact, patient_ref: dict[str, str], previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """TT-15 contact consents and the GP-contact wish (TT-02, TT-14) recorded at a PCMIS contact."""
    return contact_preferences(
        patient_ref, contact.consents, contact.gp_contact_allowed, contact.self_referral, contact.contact_time, "PCMIS", previous
    )


def consent_id(patient_ref: dict[str, str]) -> str:
    """The id of the patient's one contact-preferences Consent."""
    return resource_id("Consent", PCMIS_CONTACT_SYSTEM, f"contact-preferences#{patient_ref['reference']}")


def contact_preferences(
    patient_ref: dict[str, str],
    consents: dict[str, bool | None],
    gp_contact_allowed: bool | None,
    self_referral: bool,
    when: datetime,
    recorded_in: str,
    previous: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The patient's one contact-preferences Consent (TT-15) with the GP-contact wish (TT-02, TT-14): answers given
    now replace earlier ones; one left blank now keeps its earlier answer. PCMIS and pathway self-referrals share it."""
    actions = {
        "email": "contact by email",
        "phone": "contact by home, mobile or work phone",
        "voicemail": "leave voicemail",
        "sms": "contact by SMS",
    }
    provisions: list[dict[str, Any]] = [
        {"type": "permit" if allowed else "deny", "action": [{"text": actions[channel]}]}
        for channel, allowed in consents.items()
        if allowed is not None
    ]
    if gp_contact_allowed is not None:
        provisions.append({"type": "permit" if gp_contact_allowed else "deny", "action": [{"text": GP_CONTACT_ACTION}]})
    given = {p["action"][0]["text"] for p in provisions}
    earlier: list[dict[str, Any]] = ((previous or {}).get("provision") or {}).get("provision", [])
    kept = [p for p in earlier if p["action"][0]["text"] not in given]
    provisions = kept + provisions
    return {
        "resourceType": "Consent",
        "id": consent_id(patient_ref),
        "meta": {"profile": [f"{codes.UKCORE}Consent"]},
        "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"text": "Contact preferences (NHS Talking Therapies)"}],
        "patient": patient_ref,
        "dateTime": to_fhir_instant(when),
        "policyRule": {"text": f"Recorded in {recorded_in}" + (" at self-referral" if self_referral else "") + " (TT-15)"},
        "provision": {"type": "permit", "provision": provisions},
    }
