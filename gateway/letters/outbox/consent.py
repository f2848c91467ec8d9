"""Consent, read when a letter is sent (not when it was requested): TT-14 and TT-15.

- TT-14 / TT-02: a client who asked that the GP not be contacted (recorded at self-referral, PCMIS
  `gp_contact_allowed = N`) gets no GP letter of a type that honours it (letter-types.yaml `gp_consent`).
  A "deny" recorded for any client is honoured: the wish is only ever recorded at self-referral.
- TT-14 / TT-15: a copy to the client goes only while they have not said they prefer not.
- TT-15: a client's letter goes by email only while their contact preferences permit email (else by post).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from fhir_mapping.letters.types import LetterType
from fhir_mapping.pcmis import CLIENT_COPY_ACTION, GP_CONTACT_ACTION, consent_id
from gateway.platform.store.repo import get_resource

__all__ = ["withheld_because", "email_permitted", "EMAIL_ACTION"]

EMAIL_ACTION = "contact by email"  # the contact-preferences provision that permits email (TT-15)


def _denied(consent: dict[str, Any] | None, action: str) -> bool:
    if not consent or consent.get("status") != "active":
        return False
    provisions = (consent.get("provision") or {}).get("provision", [])
    return any(p.get("type") == "deny" and any(a.get("text") == action for a in p.get("action", [])) for p in provisions)


def withheld_because(session: Session, letter_type: LetterType, recipient_kind: str, patient_id: str | None) -> str | None:
    """Why this delivery must not go now, or None (it may go)."""
    if patient_id is None:
        return None
    preferences = consent_id({"reference": f"Patient/{patient_id}"})
    consent = get_resource(session, "Consent", preferences)
    if recipient_kind == "gp" and letter_type.gp_consent and _denied(consent, GP_CONTACT_ACTION):
        return f"TT-14: the client asked that the GP not be contacted (Consent/{preferences})"
    if recipient_kind == "patient" and _denied(consent, CLIENT_COPY_ACTION):
        return f"TT-14, TT-15: the client prefers not to receive copies of letters (Consent/{preferences})"
    return None


def email_permitted(session: Session, patient_id: str) -> bool:
    """TT-15: the patient's contact preferences permit email."""
    consent = get_resource(session, "Consent", consent_id({"reference": f"Patient/{patient_id}"}))
    if not consent or consent.get("status") != "active":
        return False
    provisions = (consent.get("provision") or {}).get("provision", [])
    return any(p.get("type") == "permit" and any(a.get("text") == EMAIL_ACTION for a in p.get("action", [])) for p in provisions)
