"""Contact batches from EPR exports (PCMIS, SystmOne): each row its own transaction and its own outcome.

A bad row never drops the good ones silently: the reply lists every row (accepted, refused with
its issues, duplicate, or conflict: a contact received before whose row has changed, naming the
columns). Rows share one pipeline: the patient by NHS number, the source's own resources, and
every measure recorded checked and scored by the gateway's one scorer (risk items acted on as for
any response: CAS-10 / Flag; in a row refused, too: gateway.epr.batch_risks). A PCMIS row is then recorded on the patient's open Talking
Therapies episode, in the same transaction (`Pathways.link_pcmis_contact`: TT-08..TT-13); a SystmOne row on
the patient's open primary care episode (`Pathways.link_systmone_contact`: PC-04, PC-05, PC-08).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial
from typing import Any, Protocol

import structlog
from sqlalchemy.orm import Session, sessionmaker

from adapters.csv_rows import changed_columns
from adapters.pcmis import PcmisContact, parse_pcmis_csv
from adapters.problems import GatewayInputError, Kind, Problem
from adapters.referral import Demographics
from adapters.systmone import SystmOneContact, parse_systmone_csv
from common import codes
from fhir_mapping.fhir import to_json_dict
from fhir_mapping.measures import MeasureCatalogue
from fhir_mapping.patients import patient_resource
from fhir_mapping.pcmis import contact_consent, contact_encounter, employment_observation, measure_responses
from fhir_mapping.scoring import check_response, score_answers
from fhir_mapping.systmone import care_plans, systmone_encounter, systmone_responses
from gateway.epr.batch_risks import refused_row_risks
from gateway.measures.responses import ResponseIntake, response_id, response_resources
from gateway.platform.clock import Clock
from gateway.platform.messages import Inbound, Reply, commit_message, previous
from gateway.platform.quarantine import note_refused, note_resent
from gateway.platform.store.repo import find_by_identifier, get_resource, open_cas_tasks

__all__ = [
    "ContactBatches",
    "Link",
    "StoreReads",
    "EMPTY_STORE",
    "pcmis_batches",
    "systmone_batches",
    "build_pcmis",
    "build_systmone",
    "map_row_offline",
    "CHANNEL_PCMIS",
    "CHANNEL_SYSTMONE",
]

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


@dataclass(frozen=True)
class StoreReads:
    """What mapping a row reads from the store: a stored resource by type and id, and a patient's open CAS
    queue Tasks (a risk answer acts on them, CAS-10). Inside a row's transaction they are reads on its
    session; offline (the benchmark) they are `EMPTY_STORE`'s, so the mapping itself stays free of the store."""

    resource: Callable[[str, str], dict[str, Any] | None]
    open_cas_tasks: Callable[[str], list[dict[str, Any]]]

    @classmethod
    def of(cls, session: Session) -> StoreReads:
        return cls(partial(get_resource, session), partial(open_cas_tasks, session))


EMPTY_STORE = StoreReads(lambda _type, _id: None, lambda _patient_id: [])

# the resources a row becomes, besides its Patient: (catalogue, reads, contact, patient, now)
Build = Callable[[MeasureCatalogue, StoreReads, Any, dict[str, Any], datetime], list[dict[str, Any]]]
# then, in the row's transaction, what the row changes beyond itself (PCMIS: the patient's Talking Therapies episode,
# gateway.pathways.service): (session, contact, patient, the row's resources, now) -> (its resources as stored, warnings)
Link = Callable[[Session, Any, dict[str, Any], list[dict[str, Any]], datetime], tuple[list[dict[str, Any]], list[Problem]]]


class ContactBatches:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        clock: Clock,
        channel: str,
        parse: Callable[[bytes, int | None], Sequence[Row]],
        build: Build,
        catalogue: MeasureCatalogue,
        link: Link | None = None,
    ) -> None:
        self.sessions, self.clock, self.channel, self.parse, self.build = sessions, clock, channel, parse, build
        self.catalogue, self.link = catalogue, link

    def receive_batch(self, raw: bytes, max_rows: int | None = None, gone: Callable[[], bool] = lambda: False) -> Reply:
        """Every row's outcome. A file over `max_rows` rows is refused whole, before any row is stored; once `gone()`
        (the sender hung up) no further row is started: the rows committed stay committed (a re-sent file finds them
        duplicates), the rest are taken when the file is sent again."""
        rows = self.parse(raw, max_rows)
        now = self.clock.now()
        results: list[dict[str, Any]] = []
        for row in rows:
            if gone():
                log.info("batch.sender_gone", channel=self.channel, rows=len(rows), done=len(results))
                break
            outcome: dict[str, Any] = {"row": row.number, "contact_id": row.contact_id}
            if row.contact is None:
                results.append(_refused(row, outcome, row_issues([*row.problems, *self._risks(row, now)])))
                continue
            original = previous(self.sessions, self.channel, row.contact.contact_id)
            if original is not None:
                results.append(outcome | _again(row, original.raw))
                if results[-1]["outcome"] == "duplicate":
                    note_resent(row.contact_id, original.seq)  # the console counts it (gateway.platform.quarantine)
                else:  # a changed contact is not applied: a risk answer its change brings is acted on all the same (issue 33)
                    results[-1]["issues"] += row_issues(self._risks(row, now, self.parse(original.raw, None)))
                    note_refused(row.contact_id, row.source, results[-1]["issues"])
                continue
            try:
                stored, notes = self._store(row, now)
            except GatewayInputError as exc:
                results.append(_refused(row, outcome, row_issues([*exc.problems, *self._risks(row, now)])))
                continue
            warnings = [p for p in row.problems if not p.is_error]
            issues = row_issues(warnings) + notes
            results.append(outcome | {"outcome": "accepted", "resources": stored} | ({"issues": issues} if issues else {}))
        counts = {k: sum(1 for r in results if r["outcome"] == k) for k in ("accepted", "refused", "duplicate", "conflict")}
        log.info("batch.received", channel=self.channel, rows=len(rows), **counts)
        return Reply(200, {"rows": results, **counts})

    def _risks(self, row: Row, now: datetime, first: Sequence[Row] = ()) -> list[Problem]:
        """Issue 33: a row not stored still acts on its risk answers (gateway.epr.batch_risks); the warnings saying how. For a
        changed re-send, `first` is the contact as first received: only the answers the export changed are new."""
        intake = ResponseIntake(self.sessions, self.catalogue, self.clock)
        return refused_row_risks(intake, self.channel, row, now, first[0] if first else None)

    def _store(self, row: Row, now: datetime) -> tuple[list[str], list[dict[str, Any]]]:
        """The row in its own transaction: (the references it stored, the issues of warnings its link raised)."""
        notes: list[Problem] = []

        def write(session: Session) -> list[tuple[dict[str, Any], str | None]]:
            patient = _patient(session, row.contact.nhs_number)
            built = self.build(self.catalogue, StoreReads.of(session), row.contact, patient, now)
            if self.link is not None:
                built, found = self.link(session, row.contact, patient, built, now)
                notes[:] = [replace(p, element=f"row[{row.number}].{p.element}") for p in found]  # a retried write starts afresh
            return [(r, None) for r in [patient, *built]]

        def reply(stored: list[dict[str, Any]], _created: set[str]) -> Reply:
            issues = {"issues": row_issues(notes)} if notes else {}
            return Reply(200, {"resources": [f"{r['resourceType']}/{r['id']}" for r in stored], **issues})

        made = commit_message(self.sessions, Inbound(self.channel, row.contact.contact_id, row.source), now, write, reply)
        return list(made.body["resources"]), list(made.body.get("issues", []))


def _refused(row: Row, outcome: dict[str, Any], issues: list[dict[str, Any]]) -> dict[str, Any]:
    """A refused row's outcome; the row (header and line) is kept in the quarantine log with its issues."""
    note_refused(row.contact_id, row.source, issues)
    return outcome | {"outcome": "refused", "issues": issues}


def _again(row: Row, first: bytes) -> dict[str, Any]:
    """A contact received before: a duplicate when its row is as it was, else a conflict naming the changed columns.

    A changed row is never applied over the first, nor dropped unsaid: the first version stands (its clocks, counts
    and letters may already have followed from it), and the reply says which columns the export changed.
    """
    changed = changed_columns(first, row.source)
    if not changed:
        return {"outcome": "duplicate", "detail": "already received; nothing changed"}
    problems = [
        Problem(
            Kind.CONFLICT,
            f"row[{row.number}].{column}",
            f"differs from contact {row.contact_id!r} as first received, which stands: a contact the gateway has recorded "
            "is not changed by a later export",
        )
        for column in changed
    ]
    return {"outcome": "conflict", "issues": row_issues(problems)}


def row_issues(problems: Sequence[Problem]) -> list[dict[str, Any]]:
    """A row's problems, compact: OperationOutcome issues without the per-issue error code (the reply is one line per
    row of an export of up to IAP_BATCH_MAX_ROWS rows; the outcome names the kind), built as plain dicts."""
    return [
        {"severity": p.severity, "code": p.kind.issue_code, "diagnostics": p.message} | ({"expression": [p.element]} if p.element else {})
        for p in problems
    ]


def _patient(session: Session, nhs_number: str) -> dict[str, Any]:
    found = find_by_identifier(session, "Patient", codes.NHS_NUMBER, nhs_number)
    return found[0] if found else _new_patient(nhs_number)


def _new_patient(nhs_number: str) -> dict[str, Any]:
    return to_json_dict(patient_resource(Demographics(nhs_number=nhs_number), None))


def map_row_offline(build: Build, catalogue: MeasureCatalogue, contact: Any, now: datetime) -> list[dict[str, Any]]:
    """What a parsed row becomes against an empty store (a new patient, nothing stored): its Patient first (the benchmark)."""
    patient = _new_patient(contact.nhs_number)
    return [patient, *build(catalogue, EMPTY_STORE, contact, patient, now)]


def _scored(
    reads: StoreReads, catalogue: MeasureCatalogue, responses: list[dict[str, Any]], patient: dict[str, Any], now: datetime
) -> list[dict[str, Any]]:
    """Each response checked and scored; its Observations, and the risk action when a risk item is raised."""
    out: list[dict[str, Any]] = []
    for qr in responses:
        measure, answers = check_response(qr, catalogue)
        scored = score_answers(measure, answers)
        open_tasks = reads.open_cas_tasks(patient["id"]) if scored.risks else None
        out += response_resources(qr, scored, response_id(qr), qr["subject"], qr["encounter"], now, open_tasks)
    return out


def build_pcmis(
    catalogue: MeasureCatalogue, reads: StoreReads, contact: PcmisContact, patient: dict[str, Any], now: datetime
) -> list[dict[str, Any]]:
    """A PCMIS contact: its Encounter, scored measures, employment status and consents (docs/formats/pcmis-contacts.md)."""
    subject = {"reference": f"Patient/{patient['id']}"}
    out = [
        contact_encounter(contact, subject),
        *_scored(reads, catalogue, measure_responses(contact, catalogue, subject), patient, now),
    ]
    employment = employment_observation(contact, subject)
    out += [employment] if employment else []
    consent = contact_consent(contact, subject)
    return [*out, contact_consent(contact, subject, reads.resource("Consent", consent["id"]))]


def build_systmone(
    catalogue: MeasureCatalogue, reads: StoreReads, contact: SystmOneContact, patient: dict[str, Any], now: datetime
) -> list[dict[str, Any]]:
    """A SystmOne contact: its Encounter, scored measures and care plans (docs/formats/systmone-extract.md)."""
    subject = {"reference": f"Patient/{patient['id']}"}
    responses = systmone_responses(contact, catalogue, subject)
    return [systmone_encounter(contact, subject), *_scored(reads, catalogue, responses, patient, now), *care_plans(contact, subject)]


def pcmis_batches(sessions: sessionmaker[Session], catalogue: MeasureCatalogue, clock: Clock, link: Link | None = None) -> ContactBatches:
    """PCMIS rows; `link` records each contact on the patient's Talking Therapies episode (gateway.pathways.service)."""
    return ContactBatches(sessions, clock, CHANNEL_PCMIS, parse_pcmis_csv, build_pcmis, catalogue, link)


def systmone_batches(
    sessions: sessionmaker[Session], catalogue: MeasureCatalogue, clock: Clock, link: Link | None = None
) -> ContactBatches:
    """SystmOne rows; `link` records each contact on the patient's primary care episode (gateway.pathways.service)."""
    return ContactBatches(sessions, clock, CHANNEL_SYSTMONE, parse_systmone_csv, build_systmone, catalogue, link)
