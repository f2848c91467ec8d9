"""CAS consultation notes back to the patient's EPR record (CAS-13: notes go to both CLEO and RiO), through the outbox.

A note is queued in the transaction of the case operation that makes it final (docs/epr-notes.md):
an end of assessment by a registered practitioner, or the case's completion (a ratification, a
Specialist Desk case completing, a CLEO update that ends one). One delivery per (note, destination),
where a destination is a sender profile's `destination` (gateway/epr/rules/senders/*.yaml) taking the
case's service; the row is an outbox row like a letter's (`letter_id` = the note's DocumentReference,
`letter_type` `epr-note`, `recipient_kind` `epr`, `recipient` = the profile id), so retries, dead
letters, replay and metrics are the letters' own. The HL7 v2 message is built at send time from the
stored note (fhir_mapping.hl7v2_notes), with a control id (MSH-10) fixed by the delivery id.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.orm import Session

from fhir_mapping.hl7v2_notes import NoteEnvelope, build_note_message, control_id_for
from gateway.epr.rules.sender_schema import SenderProfile, SenderRegistry
from gateway.letters.outbox import store
from gateway.letters.outbox.transports import Outgoing
from gateway.platform.store.models import OutboxRow
from gateway.platform.store.repo import ResourceQuery, get_resource, search_resources

__all__ = ["LETTER_TYPE", "RECIPIENT_KIND", "CAS_NOTES", "destinations_for", "queue_notes", "note_outgoing", "envelope_for"]

log = structlog.get_logger("iap.epr")
LETTER_TYPE = "epr-note"
RECIPIENT_KIND = "epr"
CAS_NOTES = "CAS consultation notes"  # DocumentReference.type.text of a note written in the CAS (gateway.cas.rules.ops)
SENDER = ("IAPGW", "IAP")  # MSH-3/MSH-4 of what the gateway sends, as in its ACKs (adapters.hl7v2.build_ack)


def destinations_for(senders: SenderRegistry, service_id: str) -> list[SenderProfile]:
    """The sender profiles whose destination takes this service's notes (none configured: none)."""
    return [
        p
        for p in senders.profiles.values()
        if p.destination is not None and (not p.destination.services or service_id in p.destination.services)
    ]


def queue_notes(session: Session, task: dict[str, Any], senders: SenderRegistry, service_id: str, now: datetime) -> list[str]:
    """CAS-13: each CAS consultation note of the case, to each destination, in the caller's transaction; the new delivery ids.

    A note already queued for a destination is not queued again (the delivery id is fixed by note and destination),
    so a later completion of the same case queues only what is new. Notes that came from RiO are not sent back.
    """
    destinations = destinations_for(senders, service_id)
    if not destinations:
        return []
    related: list[tuple[str, str | None, str]] = [("related", None, f"Task/{task['id']}")]
    documents, _ = search_resources(session, ResourceQuery("DocumentReference", tokens=related, count=1000))
    notes = sorted((d for d in documents if (d.get("type") or {}).get("text") == CAS_NOTES), key=lambda d: (d["date"], d["id"]))
    patient_id = task["for"]["reference"].split("/", 1)[1]
    queued = []
    for note in notes:
        for profile in destinations:
            delivery = store.delivery_id(note["id"], f"epr:{profile.id}")
            if session.get(OutboxRow, delivery) is not None:
                continue
            store.enqueue(
                session,
                delivery_id=delivery,
                letter_id=note["id"],
                letter_type=LETTER_TYPE,
                patient_id=patient_id,
                recipient_kind=RECIPIENT_KIND,
                recipient=profile.id,
                now=now,
            )
            queued.append(delivery)
    if queued:
        log.info("epr.notes_queued", deliveries=len(queued))
    return queued


def envelope_for(profile: SenderProfile) -> NoteEnvelope:
    """The note's MSH for this destination: the profile's own application and facility are the receivers."""
    destination = profile.destination
    assert destination is not None  # only destinations are asked for
    local = profile.local_identifiers[0] if profile.local_identifiers else None
    return NoteEnvelope(
        message=destination.note_message_type,
        sending_application=SENDER[0],
        sending_facility=SENDER[1],
        receiving_application=next(iter(profile.match.sending_application), profile.id.upper()),
        receiving_facility=next(iter(profile.match.sending_facility), ""),
        local_identifier_system=local.system if local else None,
        local_assigning_authority=local.assigning_authority if local else "",
    )


def note_outgoing(session: Session, delivery_id: str, note_id: str, patient_id: str, profile: SenderProfile, now: datetime) -> Outgoing:
    """The HL7 v2 message for one note delivery, from the stored note and patient; LookupError if the note is gone."""
    note = get_resource(session, "DocumentReference", note_id)
    patient = get_resource(session, "Patient", patient_id)
    if note is None or patient is None:
        raise LookupError(f"note {note_id} or its patient is not stored")
    control_id = control_id_for(delivery_id)
    body = build_note_message(note, patient, envelope_for(profile), control_id, now)
    return Outgoing(delivery_id, note_id, profile.id, body, "application/hl7-v2", control_id=control_id)
