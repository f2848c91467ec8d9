"""RiO HL7 v2 intake: parse -> map -> store, one transaction per message, ACK after commit.

A duplicate control id (same sending facility and MSH-10) is not processed twice: the same
message again (whatever its MSH-7 time) gets its original ACK; a different message reusing
the control id gets AE naming MSH-10 (gateway.resends). AE/AR ACKs store nothing. RiO notes
for a Specialist Desk case are related to that case and attached to its pending GP
notification (CAS-15).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.orm import Session, sessionmaker

from adapters.hl7v2 import Hl7Error, Hl7Message, build_ack, parse_hl7
from fhir_mapping import codes
from fhir_mapping.bundles import bundle_of
from fhir_mapping.datetimes import to_fhir_instant
from fhir_mapping.fhir import to_json_dict
from fhir_mapping.ids import resource_id
from fhir_mapping.notifications import notification_id, with_document
from fhir_mapping.patients import merge_patient, patient_resource
from fhir_mapping.rio import note_document, referral_request
from gateway.cases import is_specialist_desk
from gateway.clock import Clock
from gateway.messages import Inbound, Reply, commit_message, previous
from gateway.outbox.letters import request_letter
from gateway.resends import id_reused, same_hl7
from gateway.security.principal import SYSTEM, current_principal
from gateway.store.models import ResourceRow
from gateway.store.repo import ResourceQuery, StoredMessage, find_by_identifier, get_resource, put_resource, search_resources

__all__ = ["Hl7Intake", "CHANNEL_HL7", "map_hl7", "map_hl7_offline"]

log = structlog.get_logger("iap.hl7")
CHANNEL_HL7 = "hl7v2"
UPDATES_ONLY = {("ADT", "A08"), ("ADT", "A31")}  # update person / patient information: the patient must exist


class Hl7Intake:
    def __init__(self, sessions: sessionmaker[Session], clock: Clock) -> None:
        self.sessions = sessions
        self.clock = clock

    def receive(self, raw: bytes) -> bytes:
        """One ER7 message in, its ACK out (AA after commit; AE/AR with the reason, nothing stored)."""
        now = self.clock.now()
        try:
            message = parse_hl7(raw)
        except Hl7Error as error:
            log.info("hl7.refused", ack=error.ack, code=error.code, segment=error.segment, field=error.field_no)
            return build_ack(error.control_id, "", error, now)
        header = message.header
        key = f"{header.sending_facility}|{header.control_id}"
        original = previous(self.sessions, CHANNEL_HL7, key)
        if original is not None:
            return _again(original, raw, message, now)

        def write(session: Session) -> list[tuple[dict[str, Any], str | None]]:
            return [(r, None) for r in self._resources(session, message, now)]

        def make_reply(stored: list[dict[str, Any]], created: set[str]) -> Reply:
            ack = build_ack(header.control_id, header.trigger, None, now).decode()
            return Reply(200, {"ack": ack, "resources": [f"{r['resourceType']}/{r['id']}" for r in stored]})

        try:
            inbound = Inbound(CHANNEL_HL7, key, raw, unused=message.unused_segments)
            reply = commit_message(
                self.sessions,
                inbound,
                now,
                write,
                make_reply,
                on_race=lambda original: Reply(200, {"ack": _again(original, raw, message, now).decode()}, duplicate=True),
            )
        except Hl7Error as error:  # found while writing (e.g. an update for an unknown patient): rolled back
            log.info("hl7.refused", ack=error.ack, code=error.code, segment=error.segment, field=error.field_no)
            return build_ack(error.control_id, header.trigger, error, now)
        if reply.duplicate:  # a racing copy (or a message reusing its control id) was stored first: answered above
            return str(reply.body["ack"]).encode()
        log.info("hl7.accepted", type=f"{header.message_type}^{header.trigger}", resources=len(reply.body.get("resources", [])))
        return str(reply.body["ack"]).encode()

    def _resources(self, session: Session, message: Hl7Message, now: datetime) -> list[dict[str, Any]]:
        found = find_by_identifier(session, "Patient", codes.NHS_NUMBER, message.patient.nhs_number)
        if not found and (message.header.message_type, message.header.trigger) in UPDATES_ONLY:
            raise Hl7Error(
                "AE",
                f"PID-3: no patient with this NHS number is known; {message.header.trigger} updates, send ADT^A04 or A28 to register",
                "PID",
                3,
                204,
                message.header.control_id,
            )
        desk: list[str] = []
        if message.notes:
            patient_id = found[0]["id"] if found else resource_id("Patient", codes.NHS_NUMBER, message.patient.nhs_number)
            cases, _ = search_resources(session, ResourceQuery("Task", patient=patient_id, count=1000))
            bound = (current_principal() or SYSTEM).service_id  # an EPR bound to a service relates notes to its own cases only
            desk = [f"Task/{t['id']}" for t in cases if is_specialist_desk(t) and (bound is None or _service_of(session, t["id"]) == bound)]
        out = []
        for resource in map_hl7(message, found[0] if found else None, desk, now):
            out.append(resource)
            if resource["resourceType"] != "DocumentReference":
                continue
            for case in desk:  # CAS-15: a completed case's pending GP notification gets the note too (a replacement letter)
                pending = get_resource(session, "CommunicationRequest", notification_id(case.split("/", 1)[1]))
                if pending and pending.get("status") == "active":
                    put_resource(session, resource, now)  # the letter reports it, so it is stored first
                    request_letter(session, with_document(pending, f"DocumentReference/{resource['id']}"), now)
        return out


def _again(original: StoredMessage, raw: bytes, message: Hl7Message, now: datetime) -> bytes:
    """A message under a stored control id: the original ACK when it is that message again (MSH-7 aside), else AE
    naming MSH-10 (table 0357 code 205, duplicate key identifier): a different message is never taken for a re-send."""
    header = message.header
    if same_hl7(original.raw, raw):
        log.info("hl7.resent", type=f"{header.message_type}^{header.trigger}")
        return str(json.loads(original.response_body)["ack"]).encode()
    id_reused(CHANNEL_HL7, "MSH-10", original.seq)
    text = "MSH-10 already used by a different message: needs a new id"  # MSA-3 holds 80, ERR 60
    return build_ack(header.control_id, header.trigger, Hl7Error("AE", text, "MSH", 10, 205, header.control_id), now)


def map_hl7(message: Hl7Message, stored_patient: dict[str, Any] | None, desk_cases: list[str], now: datetime) -> list[dict[str, Any]]:
    """Pure: the resources a parsed message becomes, given the patient as stored (if known) and the patient's
    Specialist Desk cases (Task references) that its notes relate to."""
    patient = merge_patient(stored_patient, to_json_dict(patient_resource(message.patient, message.gp_practice_ods)))
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
