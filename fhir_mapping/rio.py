"""RiO HL7 v2 source models -> FHIR R4: notes as DocumentReference, referrals as ServiceRequest.

Takes: an `Hl7Message` (adapters.hl7v2). Returns fhir.resources objects with deterministic ids
from (sending facility, RiO identifier), so a re-sent note or referral maps to the same resource.
Patients are mapped by fhir_mapping.patients (one per NHS number).
"""

from __future__ import annotations

import base64
from datetime import datetime

from adapters.hl7v2 import Hl7Message, Hl7Note
from common import codes
from common.datetimes import to_fhir_instant
from fhir_mapping.fhir import Built, DocumentReference, ServiceRequest, build
from fhir_mapping.ids import resource_id

__all__ = ["note_document", "referral_request", "RIO_NOTE_SYSTEM", "RIO_REFERRAL_SYSTEM"]

RIO_NOTE_SYSTEM = f"{codes.GATEWAY_BASE}/Id/rio-note"
RIO_REFERRAL_SYSTEM = f"{codes.GATEWAY_BASE}/Id/rio-referral"


def note_document(
    message: Hl7Message, note: Hl7Note, patient_ref: dict[str, str], related: list[str], received_at: datetime
) -> Built[DocumentReference]:
    """A RiO note as a DocumentReference (text/plain), related to the CAS cases it belongs to (CAS-13, CAS-15)."""
    system = f"{RIO_NOTE_SYSTEM}/{message.header.sending_facility or 'RIO'}"
    return build(
        DocumentReference,
        id=resource_id("DocumentReference", system, note.note_id),
        meta={"profile": [f"{codes.UKCORE}DocumentReference"]},
        identifier=[{"system": system, "value": note.note_id}],
        status="current",
        type={"text": note.title},
        subject=patient_ref,
        date=to_fhir_instant(note.written_at or message.header.sent_at or received_at),
        author=[{"display": note.author}] if note.author else None,
        description=f"{note.title} from RiO ({message.header.message_type}^{message.header.trigger})",
        content=[
            {
                "attachment": {
                    "contentType": "text/plain; charset=utf-8",
                    "data": base64.b64encode(note.text.encode()).decode(),
                    "title": note.title,
                }
            }
        ],
        context={"related": [{"reference": ref} for ref in related]} if related else None,
    )


def referral_request(message: Hl7Message, patient_ref: dict[str, str], received_at: datetime) -> Built[ServiceRequest]:
    """A REF^I12 referral as a ServiceRequest."""
    referral = message.referral
    assert referral is not None
    system = f"{RIO_REFERRAL_SYSTEM}/{message.header.sending_facility or 'RIO'}"
    return build(
        ServiceRequest,
        id=resource_id("ServiceRequest", system, referral.referral_id),
        meta={"profile": [f"{codes.UKCORE}ServiceRequest"]},
        identifier=[{"system": system, "value": referral.referral_id}],
        status="active",
        intent="order",
        category=[{"coding": [{"system": codes.SNOMED, "code": "3457005", "display": "Patient referral"}]}],
        subject=patient_ref,
        authoredOn=to_fhir_instant(referral.referred_at or message.header.sent_at or received_at),
        requester={"display": referral.referred_by} if referral.referred_by else None,
        reasonCode=[{"text": referral.reason}] if referral.reason else None,
    )
