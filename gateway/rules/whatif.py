"""What a candidate rule file would have decided on real traffic (issue 37), before anyone activates it.

`what_if` replays the stored inbound messages of one service (111 cases, BaRS, MHPL; pathway referrals: gateway.
rules.whatif_pathways) from their raw bodies, through the same adapters and rules intake uses, with the candidate in
place of the live file, and compares each decision with the one stored. All of it runs in one READ-ONLY transaction
(PostgreSQL: `SET TRANSACTION READ ONLY`, SQLite: `PRAGMA query_only`), rolled back at the end: nothing is written,
nothing is sent. Time is the injected clock's.

CAS cases are compared with the decision stored at intake (the Task's first version): priority, classification
(CAS-04, CAS-06), breach time (CAS-03, CAS-05, CAS-06, CAS-04); for the case as it stands, breach colour now and the
safety calls due over its open life (CAS-09). A person's later decision on a case (a CN upgrade) is kept as it is.
The report is typed (`WhatIfReport`) so the console and the CLI render the same thing (gateway.rules.whatif_format).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, select

from adapters.bars import parse_bars_message
from adapters.mhpl import parse_mhpl_call
from adapters.nhs111_case import parse_nhs111_case
from adapters.problems import GatewayInputError
from adapters.referral import Referral
from common.datetimes import parse_source_datetime, to_fhir_instant
from gateway.cas.rules.intake import QueueDecision
from gateway.cas.rules.queue import breach_status
from gateway.cas.rules.schema import RuleFileError, RuleRegistry, ServiceRules
from gateway.platform.clock import Clock
from gateway.platform.store.models import InboundMessage, ResourceRow, ResourceVersionRow, RuleFileVersionRow
from gateway.platform.store.repo import case_rule_set
from gateway.rules.candidate import Candidate, ValueChange
from gateway.rules.versions import parse_cas_version
from gateway.rules.whatif_report import CaseChange, WhatIfReport

__all__ = ["WhatIfReport", "CaseChange", "what_if", "read_only", "parse_since", "safety_calls_due", "CAS_CHANNELS"]

CAS_CHANNELS = ("nhs111-case", "bars", "mhpl")
OPEN_STATUSES = ("requested", "received", "accepted", "ready", "in-progress", "on-hold")
_SINCE = re.compile(r"^(\d{1,4})([hdw])$")


def parse_since(text: str) -> timedelta:
    """`30d`, `12h`, `2w` (or an ISO 8601 duration such as P30D)."""
    match = _SINCE.match(text.strip())
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        return {"h": timedelta(hours=amount), "d": timedelta(days=amount), "w": timedelta(weeks=amount)}[unit]
    from common.datetimes import parse_iso_duration

    try:
        return parse_iso_duration(text.strip())
    except ValueError:
        raise ValueError(f"--since {text[:20]!r}: give a window such as 30d, 12h, 2w or P30D") from None


@contextmanager
def read_only(engine: Engine) -> Iterator[Connection]:
    """One transaction that cannot write (the database refuses it) and is rolled back at the end."""
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as connection:
        if sqlite:
            connection.exec_driver_sql("PRAGMA query_only = ON")
            connection.rollback()  # the pragma's own (auto-begun) transaction: ended, so ours is the one below
        try:
            transaction = connection.begin()
            try:
                if not sqlite:
                    connection.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                yield connection
            finally:
                transaction.rollback()
        finally:
            if sqlite:
                connection.exec_driver_sql("PRAGMA query_only = OFF")  # the pooled connection writes again for others
                connection.rollback()


def safety_calls_due(breach: datetime, end: datetime, rules: ServiceRules) -> int:
    """CAS-09: safety calls due for a case with this breach time while it was open (until `end`): one per
    `safety_calls.every` from the moment it turned amber (gateway.cas.safety_calls numbers them the same way)."""
    amber_from = breach - rules.breach_status.amber_within
    return 0 if end < amber_from else int((end - amber_from) / rules.safety_calls.every) + 1


def what_if(engine: Engine, candidate: Candidate, live: RuleRegistry | Any, clock: Clock, since: timedelta) -> WhatIfReport:
    """Replay the candidate's service's stored messages received in `since` up to now; nothing is written.
    `live`: the live rules (a RuleRegistry for CAS files, a PathwayRegistry for pathway files)."""
    now = clock.now()
    report = WhatIfReport(
        candidate.service_id, candidate.kind, candidate.live_version, candidate.version, now - since, now, value_changes=candidate.changes
    )
    if candidate.kind == "pathway":
        from gateway.rules.whatif_pathways import replay_pathway

        with read_only(engine) as connection:
            return replay_pathway(connection, candidate, live, report)
    if candidate.kind != "cas-queue" or candidate.registry is None:
        raise ValueError(f"what-if replays CAS queue and pathway rule files; {candidate.source.name} is a {candidate.kind} file")
    with read_only(engine) as connection:
        return _replay_cas(connection, candidate, live, report)


_CAS_ROWS = (
    select(
        InboundMessage.seq,
        InboundMessage.channel,
        InboundMessage.message_id,
        InboundMessage.correlation_id,
        InboundMessage.received_at,
        InboundMessage.raw,
        InboundMessage.task_id,
        ResourceRow.status,
        ResourceRow.breach_at,
        ResourceRow.last_updated,
        # the decision as intake stored it: the Task's first version (a case stored before its versions were kept, 0007,
        # has only its current one: compared from that, not left out)
        func.coalesce(ResourceVersionRow.content, ResourceRow.content).label("content"),
    )
    .join(ResourceRow, and_(ResourceRow.resource_type == "Task", ResourceRow.id == InboundMessage.task_id))
    .outerjoin(
        ResourceVersionRow,
        and_(
            ResourceVersionRow.resource_type == "Task", ResourceVersionRow.id == InboundMessage.task_id, ResourceVersionRow.version_id == 1
        ),
    )
    .order_by(InboundMessage.seq)
)


def _replay_cas(connection: Connection, candidate: Candidate, live: RuleRegistry, report: WhatIfReport) -> WhatIfReport:
    service = candidate.service_id
    live_rules, rules = live.services[service], candidate.rules
    assert isinstance(rules, ServiceRules) and candidate.registry is not None
    query = _CAS_ROWS.where(
        InboundMessage.channel.in_(CAS_CHANNELS),
        InboundMessage.received_at >= report.since,
        InboundMessage.received_at <= report.now,
        InboundMessage.response_status < 300,
        ResourceRow.service_id == service,
    )
    seen: set[str] = set()
    replayed = resent = unreadable = 0
    kept = _kept_versions(connection, service)  # "before" is each case as the queue shows it: its own version's colours
    for row in connection.execution_options(stream_results=True, yield_per=500).execute(query):
        if row.task_id in seen:
            resent += 1  # a re-send of a case: its first message decided it (CAS-08 merges only ever upgrade)
            continue
        seen.add(row.task_id)
        try:
            referral = _parse(row.channel, bytes(row.raw), row.message_id, row.correlation_id)
        except GatewayInputError:
            unreadable += 1
            continue
        replayed += 1
        change = _compare_case(row, referral, candidate, live_rules, rules, report.now, kept)
        if change is not None:
            report.cases.append(change)
    return _with_counts(report, replayed, resent, unreadable)


def _kept_versions(connection: Connection, service: str) -> dict[str, ServiceRules]:
    """The service's CAS versions in the rule file history, by label (gateway.rules.versions: open cases follow them)."""
    stored = select(RuleFileVersionRow.label, RuleFileVersionRow.content).where(
        RuleFileVersionRow.kind == "cas-queue", RuleFileVersionRow.service_id == service
    )
    kept = {}
    for label, content in connection.execute(stored):
        try:
            kept[label] = parse_cas_version(content)
        except RuleFileError:
            continue  # a version today's schema no longer reads: its cases are shown by the live file, as /queue does
    return kept


def _with_counts(report: WhatIfReport, replayed: int, resent: int, unreadable: int) -> WhatIfReport:
    return replace(report, replayed=replayed, resent=resent, unreadable=unreadable)


def _parse(channel: str, raw: bytes, message_id: str, correlation_id: str | None) -> Referral:
    if channel == "bars":
        return parse_bars_message(raw, message_id, correlation_id or message_id)
    return parse_mhpl_call(raw) if channel == "mhpl" else parse_nhs111_case(raw)


def _stored(task: dict[str, Any]) -> tuple[str | None, str | None, datetime, tuple[str, ...], str | None]:
    """(priority, classification, breach time, rule ids, rule set) of a stored Task."""
    coding = ((task.get("businessStatus") or {}).get("coding") or [{}])[0]
    inputs = {i["type"]["coding"][0]["code"]: i.get("valueString") for i in task.get("input", [])}
    rules = inputs.get("rules-applied") or ""
    breach = parse_source_datetime(task["restriction"]["period"]["end"])
    return task.get("priority"), coding.get("code"), breach, tuple(rules.split()), inputs.get("rule-set")


def _compare_case(
    row: Any,
    referral: Referral,
    candidate: Candidate,
    live: ServiceRules,
    rules: ServiceRules,
    now: datetime,
    kept: dict[str, ServiceRules] | None = None,
) -> CaseChange | None:
    from gateway.cas.intake import decide  # intake's own: the adapter's problems and the rules' refusals alike

    assert candidate.registry is not None
    task = json.loads(row.content)
    priority, classification, breach, rule_ids, rule_set = _stored(task)
    own = (kept or {}).get(case_rule_set(task) or "", live)  # the version its colours follow now (issue 37)
    is_open = row.status in OPEN_STATUSES
    current = row.breach_at or breach
    end = now if is_open else row.last_updated
    before: dict[str, str | int | None] = {
        "priority": priority,
        "classification": classification,
        "breach_time": to_fhir_instant(breach),
        "breach_colour": breach_status(current, now, own.breach_status) if is_open else None,
        "safety_calls": safety_calls_due(current, end, own),
        "rules": " ".join(rule_ids),
        "version": rule_set,  # the version that decided it (not always the live one: an older case keeps its own)
    }
    reason = ""
    try:
        decision: QueueDecision | None = decide(referral, candidate.registry)
    except GatewayInputError as refused:
        decision = None
        reason = "; ".join(p.message for p in refused.problems if p.is_error)[:300]
    if decision is None or decision.rules.service.id != candidate.service_id:
        kind = "refused" if decision is None else "service"
        after: dict[str, str | int | None] = {"outcome": reason if decision is None else f"routed to {decision.rules.service.id}"}
        reads = _reads(referral, rule_ids, ())
        return CaseChange(
            f"Task/{row.task_id}", row.channel, row.received_at, is_open, (kind,), before, after,
            rule_ids, _inputs(candidate.changes, reads),
        )  # fmt: skip
    # a person's later decision on the case (an upgrade: CAS-07, CAS-08) stands; else the case moves with its intake
    current_after = decision.breach_time if current == breach else min(current, decision.breach_time)
    after = {
        "priority": decision.priority,
        "classification": decision.classification,
        "breach_time": to_fhir_instant(decision.breach_time),
        "breach_colour": breach_status(current_after, now, rules.breach_status) if is_open else None,
        "safety_calls": safety_calls_due(current_after, end, rules),
        "rules": " ".join(decision.rule_ids),
        "version": candidate.label,
    }
    kinds = tuple(
        name
        for key, name in (
            ("priority", "priority"),
            ("classification", "classification"),
            ("breach_time", "breach-time"),
            ("breach_colour", "breach-colour"),
            ("safety_calls", "safety-calls"),
        )
        if before[key] != after[key]
    )
    if not kinds:
        return None
    window = tuple(r for r in decision.rule_ids if r not in ("CAS-01", "CAS-15"))
    differ = set(rule_ids) ^ set(decision.rule_ids)
    if {"priority", "breach-time"} & set(kinds):
        differ |= set(window)
    if "classification" in kinds:
        differ |= {r for r in (*rule_ids, *decision.rule_ids) if r in ("CAS-04", "CAS-06")}
    if {"breach-colour", "safety-calls"} & set(kinds):
        differ.add("CAS-09")
    reads = _reads(referral, (*rule_ids, *decision.rule_ids), kinds)
    return CaseChange(
        f"Task/{row.task_id}", row.channel, row.received_at, is_open, kinds, before, after,
        tuple(sorted(differ)), _inputs(candidate.changes, reads),
    )  # fmt: skip


def _reads(referral: Referral, rule_ids: tuple[str, ...], kinds: tuple[str, ...]) -> tuple[str, ...]:
    """The rule file values a CAS decision reads (dotted paths, as `rules check` prints them)."""
    dx = referral.pathways.dx if referral.pathways else None
    by_rule = {
        "CAS-03": ("call_handler_timeframe",),
        "CAS-04": ("red_flags",),
        "CAS-05": (f"dispositions.{dx}",) if dx else ("dispositions",),
        "CAS-06": ("mhpl",),
        "CAS-15": ("specialist_desk",),
    }
    reads: list[str] = ["service.dos_service_ids", "task_priority"]
    for rule in rule_ids:
        reads += by_rule.get(rule, ())
    if not kinds or {"breach-colour", "safety-calls"} & set(kinds):
        reads += ["breach_status", "safety_calls"]
    return tuple(reads)


def _inputs(changes: tuple[ValueChange, ...], reads: tuple[str, ...]) -> tuple[ValueChange, ...]:
    return tuple(c for c in changes if any(c.path == p or c.path.startswith((f"{p}.", f"{p}[")) for p in reads))
