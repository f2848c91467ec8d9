"""PCMIS contact batches: each row its own transaction and its own outcome, so a bad row never drops
the good ones silently; the reply lists every row. A re-sent contact id is reported and changes nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.orm import Session, sessionmaker

from adapters.pcmis import PcmisContact, parse_pcmis_csv
from adapters.problems import GatewayInputError
from adapters.referral import Demographics
from fhir_mapping import codes
from fhir_mapping.fhir import to_json_dict
from fhir_mapping.measures import MeasureCatalogue
from fhir_mapping.patients import patient_resource
from fhir_mapping.pcmis import contact_consent, contact_encounter, employment_observation, measure_responses
from fhir_mapping.replies import operation_outcome
from fhir_mapping.scoring import check_response, score_answers
from gateway.clock import Clock
from gateway.messages import Inbound, Reply, commit_message, previous
from gateway.responses import response_id, response_resources
from gateway.store.repo import find_by_identifier, get_resource, open_cas_tasks

__all__ = ["PcmisIntake", "CHANNEL_PCMIS"]

log = structlog.get_logger("iap.pcmis")
CHANNEL_PCMIS = "pcmis"


class PcmisIntake:
    def __init__(self, sessions: sessionmaker[Session], catalogue: MeasureCatalogue, clock: Clock) -> None:
        self.sessions = sessions
        self.catalogue = catalogue
        self.clock = clock

    def receive_batch(self, raw: bytes) -> Reply:
        rows = parse_pcmis_csv(raw)
        now = self.clock.now()
        results = []
        for row in rows:
            outcome: dict[str, Any] = {"row": row.number, "contact_id": row.contact_id}
            if row.contact is None:
                results.append(outcome | {"outcome": "refused", "issues": operation_outcome(list(row.problems))["issue"]})
                continue
            if previous(self.sessions, CHANNEL_PCMIS, row.contact.contact_id) is not None:
                results.append(outcome | {"outcome": "duplicate", "detail": "already received; nothing changed"})
                continue
            try:
                stored = self._store(row.contact, row.source, now)
            except GatewayInputError as exc:
                results.append(outcome | {"outcome": "refused", "issues": operation_outcome(exc.problems)["issue"]})
                continue
            results.append(outcome | {"outcome": "accepted", "resources": stored})
        counts = {k: sum(1 for r in results if r["outcome"] == k) for k in ("accepted", "refused", "duplicate")}
        log.info("pcmis.batch", rows=len(rows), **counts)
        return Reply(200, {"rows": results, **counts})

    def _store(self, contact: PcmisContact, raw: bytes, now: datetime) -> list[str]:
        def write(session: Session) -> list[tuple[dict[str, Any], str | None]]:
            found = find_by_identifier(session, "Patient", codes.NHS_NUMBER, contact.nhs_number)
            patient = found[0] if found else to_json_dict(patient_resource(Demographics(nhs_number=contact.nhs_number), None))
            subject = {"reference": f"Patient/{patient['id']}"}
            encounter = contact_encounter(contact, subject)
            out = [patient, encounter]
            for qr in measure_responses(contact, self.catalogue, subject):
                measure, answers = check_response(qr, self.catalogue)
                scored = score_answers(measure, answers)
                open_tasks = open_cas_tasks(session, patient["id"]) if scored.risks else None
                out += response_resources(qr, scored, response_id(qr), subject, qr["encounter"], now, open_tasks)
            employment = employment_observation(contact, subject)
            out += [employment] if employment else []
            consent = contact_consent(contact, subject)
            out.append(contact_consent(contact, subject, get_resource(session, "Consent", consent["id"])))
            return [(r, None) for r in out]

        reply = commit_message(
            self.sessions,
            Inbound(CHANNEL_PCMIS, contact.contact_id, raw),
            now,
            write,
            lambda stored, _created: Reply(200, {"resources": [f"{r['resourceType']}/{r['id']}" for r in stored]}),
        )
        return list(reply.body["resources"])
