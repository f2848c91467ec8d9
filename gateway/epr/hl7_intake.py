"""RiO HL7 v2 intake: parse -> map -> store, one transaction per message, ACK after commit.

A duplicate control id (same sending facility and MSH-10) is not processed twice: the same
message again (whatever its MSH-7 time) gets its original ACK; a different message reusing
the control id gets AE naming MSH-10 (gateway.platform.resends). AE/AR ACKs store nothing. RiO notes
for a Specialist Desk case are related to that case and attached to its pending GP
notification (CAS-15). Each sender is read by its profile (gateway.epr.rules.sender_schema: time
zone, NHS number placement, local identifier systems, the message types it may send); its
patient is found by any identifier it gives (gateway.epr.hl7_patients). An update (A08/A31) about a
patient not yet known creates it: the sender is the source of truth.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.orm import Session, sessionmaker

from adapters.hl7v2 import Hl7Error, Hl7Message, Hl7Reading, build_ack, parse_hl7
from common.datetimes import to_fhir_instant
from fhir_mapping.bundles import bundle_of
from fhir_mapping.fhir import to_json_dict
from fhir_mapping.ids import resource_id
from fhir_mapping.notifications import notification_id, with_document
from fhir_mapping.patients import merge_patient, patient_resource
from fhir_mapping.rio import note_document, referral_request
from gateway.cas.cases import is_specialist_desk
from gateway.epr.hl7_patients import PatientIdentity, find_patient, identity_of
from gateway.epr.rules.sender_schema import SenderProfile, SenderRegistry, load_senders
from gateway.letters.outbox.letters import request_letter
from gateway.platform.clock import Clock
from gateway.platform.messages import Inbound, Reply, commit_message, previous
from gateway.platform.quarantine import note_resent
from gateway.platform.resends import id_reused, same_hl7
from gateway.platform.security.principal import SYSTEM, current_principal
from gateway.platform.store.models import ResourceRow
from gateway.platform.store.repo import ResourceQuery, StoredMessage, get_resource, put_resource, search_resources

__all__ = ["Hl7Intake", "CHANNEL_HL7", "map_hl7", "map_hl7_offline"]

log = structlog.get_logger("iap.hl7")
CHANNEL_HL7 = "hl7v2"


class Hl7Intake:
    def __init__(self, sessions: sessionmaker[Session], clock: Clock, senders: SenderRegistry | None = None) -> None:
        self.sessions = sessions
        self.clock = clock
        self.senders = senders if senders is not None else load_senders()

    def receive(self, raw: bytes) -> bytes:
        """One ER7 message in, its ACK out (AA after commit; AE/AR with the reason, nothing stored)."""
        now = self.clock.now()
        principal = current_principal() or SYSTEM
        peer = principal.client_id[5:] if principal.client_id.startswith("mllp:") else None  # gateway.epr.mllp's principal

        def reading_for(application: str, facility: str) -> Hl7Reading:
            profile = self.senders.for_message(application, facility, peer)
            return Hl7Reading(profile.zone, profile.nhs_number.pid3, profile.nhs_number.status_field)

        try:
            message = parse_hl7(raw, reading_for)
        except Hl7Error as error:
            log.info("hl7.refused", ack=error.ack, code=error.code, segment=error.segment, field=error.field_no)
            return build_ack(error.control_id, "", error, now)
        header = message.header
        profile = self.senders.for_message(header.sending_application, header.sending_facility, peer)
        if not profile.may_send(header.message_type, header.trigger):
            text = f"MSH-9 {header.message_type}^{header.trigger} is not one this sender's profile lets it send"
            refusal = Hl7Error("AR", text, "MSH", 9, 200, header.control_id)
            log.info("hl7.refused", ack=refusal.ack, code=refusal.code, segment="MSH", field=9, sender=profile.id)
            return build_ack(header.control_id, header.trigger, refusal, now, version=header.version)
        if message.unused_segments or message.warnings:  # names and fields only, never values
            log.info("hl7.read_with_warnings", sender=profile.id, unused=list(message.unused_segments), warnings=list(message.warnings))
        key = f"{header.sending_facility}|{header.control_id}"
        original = previous(self.sessions, CHANNEL_HL7, key)
        if original is not None:
            return _again(original, raw, message, now)

        def write(session: Session) -> list[tuple[dict[str, Any], str | None]]:
            return [(r, None) for r in self._resources(session, message, profile, now)]

        def make_reply(stored: list[dict[str, Any]], created: set[str]) -> Reply:
            ack = build_ack(header.control_id, header.trigger, None, now, version=header.version).decode()
            return Reply(200, {"ack": ack, "resources": [f"{r['resourceType']}/{r['id']}" for r in stored]})

        try:
            inbound = Inbound(CHANNEL_HL7, key, raw, unused=message.unused_segments + message.warnings)
            reply = commit_message(
                self.sessions,
                inbound,
                now,
                write,
                make_reply,
                on_race=lambda original: Reply(200, {"ack": _again(original, raw, message, now).decode()}, duplicate=True),
                merge=_keep_what_others_gave,
            )
        except Hl7Error as error:  # found while writing (e.g. identifiers naming two patients): rolled back
            log.info("hl7.refused", ack=error.ack, code=error.code, segment=error.segment, field=error.field_no)
            return build_ack(error.control_id, header.trigger, error, now, version=header.version)
        if reply.duplicate:  # a racing copy (or a message reusing its control id) was stored first: answered above
            return str(reply.body["ack"]).encode()
        log.info("hl7.accepted", type=f"{header.message_type}^{header.trigger}", resources=len(reply.body.get("resources", [])))
        return str(reply.body["ack"]).encode()

    def _resources(self, session: Session, message: Hl7Message, profile: SenderProfile, now: datetime) -> list[dict[str, Any]]:
        identity = identity_of(message, profile)
        found = find_patient(session, identity, message.header.control_id)
        desk: list[str] = []
        if message.notes:
            patient_id = found["id"] if found else identity.new_id
            cases, _ = search_resources(session, ResourceQuery("Task", patient=patient_id, count=1000))
            bound = (current_principal() or SYSTEM).service_id  # an EPR bound to a service relates notes to its own cases only
            desk = [f"Task/{t['id']}" for t in cases if is_specialist_desk(t) and (bound is None or _service_of(session, t["id"]) == bound)]
        out = []
        for resource in map_hl7(message, found, desk, now, identity):
            out.append(resource)
            if resource["resourceType"] != "DocumentReference":
                continue
            for case in desk:  # CAS-15: a completed case's pending GP notification gets the note too (a replacement letter)
                pending = get_resource(session, "CommunicationRequest", notification_id(case.split("/", 1)[1]))
                if pending and pending.get("status") == "active":
                    put_resource(session, resource, now)  # the letter reports it, so it is stored first
                    request_letter(session, with_document(pending, f"DocumentReference/{resource['id']}"), now)
        return out


def _keep_what_others_gave(stored: dict[str, Any], resource: dict[str, Any]) -> dict[str, Any]:
    """A Patient is merged with its version as locked for the write (not only as read before): a patient this sender
    cannot see, or another source's write in between, keeps its other identifiers and elements."""
    return merge_patient(stored, resource) if resource["resourceType"] == "Patient" else resource


def _again(original: StoredMessage, raw: bytes, message: Hl7Message, now: datetime) -> bytes:
    """A message under a stored control id: the original ACK when it is that message again (MSH-7 aside), else AE
    naming MSH-10 (table 0357 code 205, duplicate key identifier): a different message is never taken for a re-send."""
    header = message.header
    if same_hl7(original.raw, raw):
        log.info("hl7.resent", type=f"{header.message_type}^{header.trigger}")
        note_resent(f"{header.sending_facility}|{header.control_id}", original.seq)  # counted as a re-send (gateway.platform.quarantine)
        return str(json.loads(original.response_body)["ack"]).encode()
    id_reused(CHANNEL_HL7, "MSH-10", original.seq)
    text = "MSH-10 already used by a different message: needs a new id"  # MSA-3 holds 80, ERR 60
    reused = Hl7Error("AE", text, "MSH", 10, 205, header.control_id)
    return build_ack(header.control_id, header.trigger, reused, now, version=header.version)


def map_hl7(
    message: Hl7Message,
    stored_patient: dict[str, Any] | None,
    desk_cases: list[str],
    now: datetime,
    identity: PatientIdentity | None = None,
) -> list[dict[str, Any]]:
    """Pure: the resources a parsed message becomes, given the patient as stored (if known), the patient's
    Specialist Desk cases (Task references) that its notes relate to, and its identifiers (gateway.epr.hl7_patients)."""
    identity = identity or identity_of(message, SenderProfile.default(message.header.sending_facility))
    update = patient_resource(
        message.patient,
        message.gp_practice_ods,
        patient_id=stored_patient["id"] if stored_patient else identity.new_id,
        identifiers=identity.identifiers,
    )
    sent = to_json_dict(update)
    if message.birth_date_partial:
        sent["birthDate"] = message.birth_date_partial
    patient = merge_patient(stored_patient, sent)
    patient_ref = {"reference": f"Patient/{patient['id']}"}
    out = [patient]
    if message.referral is not None:
        out.append(to_json_dict(referral_request(message, patient_ref, now)))
    out += [to_json_dict(note_document(message, note, patient_ref, desk_cases, now)) for note in message.notes]
    return out


def map_hl7_offline(raw: bytes, received_at: datetime) -> dict[str, Any]:
    """What `raw` becomes against an empty store (a new patient, no open cases): a collection Bundle (the benchmark)."""
    message = parse_hl7(raw)
    bundle_id = resource_id("Bundle", f"hl7v2|{message.header.sending_facility}", message.header.control_id)
    return bundle_of(map_hl7(message, None, [], received_at), "collection", bundle_id, to_fhir_instant(received_at))


def _service_of(session: Session, task_id: str) -> str | None:
    row = session.get(ResourceRow, ("Task", task_id))
    return row.service_id if row else None
