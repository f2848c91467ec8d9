"""Contact batches from EPR exports (PCMIS, SystmOne): each row its own transaction and its own outcome.

A bad row never drops the good ones silently: the reply lists every row (accepted, refused with
its issues, or duplicate). Rows share one pipeline: the patient by NHS number, the source's own
resources, and every measure recorded checked and scored by the gateway's one scorer (risk items
acted on as for any response: CAS-10 / Flag).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

import structlog
from sqlalchemy.orm import Session, sessionmaker

from adapters.pcmis import PcmisContact, parse_pcmis_csv
from adapters.problems import GatewayInputError, Problem
from adapters.referral import Demographics
from adapters.systmone import SystmOneContact, parse_systmone_csv
from fhir_mapping import codes
from fhir_mapping.fhir import to_json_dict
from fhir_mapping.measures import MeasureCatalogue
from fhir_mapping.patients import patient_resource
from fhir_mapping.pcmis import contact_consent, contact_encounter, employment_observation, measure_responses
from fhir_mapping.replies import operation_outcome
from fhir_mapping.scoring import check_response, score_answers
from fhir_mapping.systmone import care_plans, systmone_encounter, systmone_responses
from gateway.clock import Clock
from gateway.messages import Inbound, Reply, commit_message, previous
from gateway.responses import response_id, response_resources
from gateway.store.repo import find_by_identifier, get_resource, open_cas_tasks

__all__ = ["ContactBatches", "pcmis_batches", "systmone_batches", "CHANNEL_PCMIS", "CHANNEL_SYSTMONE"]

log = structlog.get_logger("iap.batches")
CHANNEL_PCMIS = "pcmis"
CHANNEL_SYSTMONE = "systmone"


class Row(Protocol):
    """A parsed export row (PcmisRow, SystmOneRow): read-only fields."""

    @property
    def number(self) -> int: ...
    @property
    def contact_id(self) -> str | None: ...
    @property
    def contact(self) -> Any: ...
    @property
    def problems(self) -> tuple[Problem, ...]: ...
    @property
    def source(self) -> bytes: ...


Build = Callable[[Session, Any, dict[str, Any], datetime], list[dict[str, Any]]]


class ContactBatches:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        clock: Clock,
        channel: str,
        parse: Callable[[bytes], Sequence[Row]],
        build: Build,
    ) -> None:
        self.sessions, self.clock, self.channel, self.parse, self.build = sessions, clock, channel, parse, build

    def receive_batch(self, raw: bytes) -> Reply:
        rows = self.parse(raw)
        now = self.clock.now()
        results = []
        for row in rows:
            outcome: dict[str, Any] = {"row": row.number, "contact_id": row.contact_id}
            if row.contact is None:
                results.append(outcome | {"outcome": "refused", "issues": operation_outcome(list(row.problems))["issue"]})
                continue
            if previous(self.sessions, self.channel, row.contact.contact_id) is not None:
                results.append(outcome | {"outcome": "duplicate", "detail": "already received; nothing changed"})
                continue
            try:
                stored = self._store(row, now)
            except GatewayInputError as exc:
                results.append(outcome | {"outcome": "refused", "issues": operation_outcome(exc.problems)["issue"]})
                continue
            warnings = [p for p in row.problems if not p.is_error]
            results.append(
                outcome
                | {"outcome": "accepted", "resources": stored}
                | ({"issues": operation_outcome(warnings)["issue"]} if warnings else {})
            )
        counts = {k: sum(1 for r in results if r["outcome"] == k) for k in ("accepted", "refused", "duplicate")}
        log.info("batch.received", channel=self.channel, rows=len(rows), **counts)
        return Reply(200, {"rows": results, **counts})

    def _store(self, row: Row, now: datetime) -> list[str]:
        def write(session: Session) -> list[tuple[dict[str, Any], str | None]]:
            patient = _patient(session, row.contact.nhs_number)
            return [(r, None) for r in [patient, *self.build(session, row.contact, patient, now)]]

        reply = commit_message(
            self.sessions,
            Inbound(self.channel, row.contact.contact_id, row.source),
            now,
            write,
            lambda stored, _created: Reply(200, {"resources": [f"{r['resourceType']}/{r['id']}" for r in stored]}),
        )
        return list(reply.body["resources"])


def _patient(session: Session, nhs_number: str) -> dict[str, Any]:
    found = find_by_identifier(session, "Patient", codes.NHS_NUMBER, nhs_number)
    return found[0] if found else to_json_dict(patient_resource(Demographics(nhs_number=nhs_number), None))


def _scored(
    session: Session, catalogue: MeasureCatalogue, responses: list[dict[str, Any]], patient: dict[str, Any], now: datetime
) -> list[dict[str, Any]]:
    """Each response checked and scored; its Observations, and the risk action when a risk item is raised."""
    out: list[dict[str, Any]] = []
    for qr in responses:
        measure, answers = check_response(qr, catalogue)
        scored = score_answers(measure, answers)
        open_tasks = open_cas_tasks(session, patient["id"]) if scored.risks else None
        out += response_resources(qr, scored, response_id(qr), qr["subject"], qr["encounter"], now, open_tasks)
    return out


def pcmis_batches(sessions: sessionmaker[Session], catalogue: MeasureCatalogue, clock: Clock) -> ContactBatches:
    def build(session: Session, contact: PcmisContact, patient: dict[str, Any], now: datetime) -> list[dict[str, Any]]:
        subject = {"reference": f"Patient/{patient['id']}"}
        out = [
            contact_encounter(contact, subject),
            *_scored(session, catalogue, measure_responses(contact, catalogue, subject), patient, now),
        ]
        employment = employment_observation(contact, subject)
        out += [employment] if employment else []
        consent = contact_consent(contact, subject)
        return [*out, contact_consent(contact, subject, get_resource(session, "Consent", consent["id"]))]

    return ContactBatches(sessions, clock, CHANNEL_PCMIS, parse_pcmis_csv, build)


def systmone_batches(sessions: sessionmaker[Session], catalogue: MeasureCatalogue, clock: Clock) -> ContactBatches:
    def build(session: Session, contact: SystmOneContact, patient: dict[str, Any], now: datetime) -> list[dict[str, Any]]:
        subject = {"reference": f"Patient/{patient['id']}"}
        responses = systmone_responses(contact, catalogue, subject)
        return [systmone_encounter(contact, subject), *_scored(session, catalogue, responses, patient, now), *care_plans(contact, subject)]

    return ContactBatches(sessions, clock, CHANNEL_SYSTMONE, parse_systmone_csv, build)
