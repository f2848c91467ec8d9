"""RiO HL7 v2 intake: parse -> map -> store, one transaction per message, ACK after commit.

A duplicate control id (same sending facility and MSH-10) is not processed twice: it gets
its original ACK. AE/AR ACKs store nothing. RiO notes for a Specialist Desk case are related
to that case and attached to its pending GP notification (CAS-15).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.orm import Session, sessionmaker

from adapters.hl7v2 import Hl7Error, Hl7Message, build_ack, parse_hl7
from fhir_mapping import codes
from fhir_mapping.fhir import to_json_dict
from fhir_mapping.notifications import notification_id, with_document
from fhir_mapping.patients import merge_patient, patient_resource
from fhir_mapping.rio import note_document, referral_request
from gateway.cases import is_specialist_desk
from gateway.clock import Clock
from gateway.messages import Inbound, Reply, commit_message, previous
from gateway.outbox.letters import request_letter
from gateway.store.repo import ResourceQuery, find_by_identifier, get_resource, put_resource, search_resources

__all__ = ["Hl7Intake", "CHANNEL_HL7"]

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
            log.info("hl7.resent", type=f"{header.message_type}^{header.trigger}")
            return str(json.loads(original.response_body)["ack"]).encode()

        def write(session: Session) -> list[tuple[dict[str, Any], str | None]]:
            return [(r, None) for r in self._resources(session, message, now)]

        def make_reply(stored: list[dict[str, Any]], created: set[str]) -> Reply:
            ack = build_ack(header.control_id, header.trigger, None, now).decode()
            return Reply(200, {"ack": ack, "resources": [f"{r['resourceType']}/{r['id']}" for r in stored]})

        try:
            reply = commit_message(self.sessions, Inbound(CHANNEL_HL7, key, raw, unused=message.unused_segments), now, write, make_reply)
        except Hl7Error as error:  # found while writing (e.g. an update for an unknown patient): rolled back
            log.info("hl7.refused", ack=error.ack, code=error.code, segment=error.segment, field=error.field_no)
            return build_ack(error.control_id, header.trigger, error, now)
        log.info("hl7.accepted", type=f"{header.message_type}^{header.trigger}", resources=len(reply.body.get("resources", [])))
        return str(reply.body["ack"]).encode()

    def _resources(self, session: Session, message: Hl7Message, now: datetime) -> list[dict[str, Any]]:
        patient_json = to_json_dict(patient_resource(message.patient, message.gp_practice_ods))
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
        patient = merge_patient(found[0] if found else None, patient_json)
        patient_ref = {"reference": f"Patient/{patient['id']}"}
        out = [patient]
        if message.referral is not None:
            out.append(to_json_dict(referral_request(message, patient_ref, now)))
        if message.notes:
            cases, _ = search_resources(session, ResourceQuery("Task", patient=patient["id"], count=1000))
            desk = [f"Task/{t['id']}" for t in cases if is_specialist_desk(t)]
            for note in message.notes:
                document = to_json_dict(note_document(message, note, patient_ref, desk, now))
                out.append(document)
                for case in desk:  # CAS-15: a completed case's pending GP notification gets the note too (a replacement letter)
                    pending = get_resource(session, "CommunicationRequest", notification_id(case.split("/", 1)[1]))
                    if pending and pending.get("status") == "active":
                        put_resource(session, document, now)  # the letter reports it, so it is stored first
                        request_letter(session, with_document(pending, f"DocumentReference/{document['id']}"), now)
        return out
