"""The CAS queue from indexed columns: one page of open cases in breach order (CAS-02), and the counts of its summary
(CAS-09 breach status, CAS-16 evidence), without reading any resource's JSON.

Open cases are the rows `models.OPEN_CAS_CASE` describes; two partial indexes hold them alone, in breach order, so a
page or a count reads the open cases of a service and nothing of the closed history. The condition is written here
with the same literal values as the indexes' predicate: PostgreSQL and SQLite use a partial index only for a query
whose WHERE implies its predicate, which a bound parameter cannot show.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, FromClause, Select, Table, and_, bindparam, case, exists, func, literal, literal_column, select
from sqlalchemy.orm import Session

from gateway.platform.store.models import ResourceRow, TokenRow
from gateway.platform.store.repo import ACTIVE_TASK_STATUSES

__all__ = ["QueueEntry", "QueueCounts", "open_cases", "queue_page", "queue_counts", "worsening_calls", "latest_tokened", "years_before"]

_RESOURCES, _TOKENS = cast(Table, ResourceRow.__table__), cast(Table, TokenRow.__table__)


def open_cases(rows: FromClause) -> ColumnElement[bool]:
    """`rows` (the resources table or an alias of it) is an open CAS case: models.OPEN_CAS_CASE, literal values and all."""
    return and_(
        rows.c.resource_type == literal_column("'Task'"),
        rows.c.breach_at.is_not(None),
        rows.c.status.in_([literal_column(f"'{status}'") for status in ACTIVE_TASK_STATUSES]),
    )


@dataclass(frozen=True)
class QueueEntry:
    """An open case as the queue shows it: its row's columns."""

    id: str
    service_id: str | None
    subject_id: str | None
    priority: str | None
    classification: str | None  # Task.businessStatus code
    breach_at: datetime
    rule_set: str | None = None  # the rule file version its colour follows (CAS-09; gateway.rules.versions)


def _page(of_service: bool, versions: bool) -> tuple[Select[Any], Select[Any]]:
    c = _RESOURCES.c
    where = [open_cases(_RESOURCES), *([c.service_id == bindparam("service")] if of_service else [])]
    version = _TOKENS.alias("version")  # the Task token `rule-set`: the version the case's colour follows (issue 37)
    on = and_(
        version.c.resource_type == literal_column("'Task'"), version.c.resource_id == c.id, version.c.param == literal_column("'rule-set'")
    )
    columns = (c.id, c.service_id, c.subject_id, c.priority, c.business_status, c.breach_at)
    page = select(*columns, version.c.code).select_from(_RESOURCES.outerjoin(version, on)) if versions else select(*columns)
    page = page.where(*where)
    page = page.order_by(c.breach_at.asc(), c.authored_on.asc(), c.id.asc()).limit(bindparam("count")).offset(bindparam("offset"))
    return page, select(func.count()).select_from(_RESOURCES).where(*where)


# statements built once (building one cost more than running it on an empty store): for all services, and for one
# (of one service, with each case's rule file version: only needed once versions with other colours exist, issue 37)
_PAGES = {(one, versions): _page(one, versions) for one in (False, True) for versions in (False, True)}


def queue_page(session: Session, service_id: str | None, count: int, offset: int, versions: bool = False) -> tuple[list[QueueEntry], int]:
    """CAS-02: one page of open cases, earliest breach first (breached lead, most overdue first; then the earlier
    referral, then the id, so the order is total and pages do not overlap), and how many open cases there are.
    `versions`: with the rule file version each case follows (QueueEntry.rule_set; else None)."""
    page, total = _PAGES[service_id is not None, versions]
    connection = session.connection()
    entries = [QueueEntry(*row) for row in connection.execute(page, {"service": service_id, "count": count, "offset": offset})]
    return entries, int(connection.execute(total, {"service": service_id}).scalar_one())


@dataclass
class QueueCounts:
    """What the CAS-16 summary counts over a service's open cases."""

    by_breach_status: Counter[str] = field(default_factory=Counter)  # green / amber / red / black (CAS-09)
    by_classification: Counter[str | None] = field(default_factory=Counter)  # Task.businessStatus code, None = blank
    urgent_cn_review_not_allocated: int = 0  # Urgent CN Review and no suitability set by a CN yet
    extreme_ages_waiting: int = 0

    @property
    def open_cases(self) -> int:
        return sum(self.by_breach_status.values())


def years_before(today: date, years: int) -> date:
    """The day `years` years before `today` (28 February for a 29 February that year lacks): someone born after it is
    under `years` years old today, someone born on or before it is at least that."""
    try:
        return today.replace(year=today.year - years)
    except ValueError:
        return today.replace(year=today.year - years, day=28)


Thresholds = tuple[timedelta, timedelta]  # a rule file version's (amber_within, black_after): CAS-09


def queue_counts(
    session: Session,
    service_id: str,
    now: datetime,
    amber_within: timedelta,
    black_after: timedelta,
    under: int,
    over: int,
    others: dict[tuple[str, ...], Thresholds] | None = None,
) -> QueueCounts:
    """One grouped query over the service's open cases (and their patients' birth dates): CAS-09 breach status as
    `gateway.cas.rules.queue.breach_status` gives it, classification, unallocated Urgent CN Review, and cases whose
    patient is younger than `under` or older than `over` years today. `others`: the thresholds of the cases that
    follow other rule file versions (by their Task token `rule-set`), where they differ from `amber_within`/`black_after`."""
    today = now.date()
    values = {
        "service": service_id,
        "black_before": now - black_after,
        "now": now,
        "amber_before": now + amber_within,
        "young_after": years_before(today, under).isoformat(),
        "old_from": years_before(today, over + 1).isoformat(),
    }
    groups = tuple(sorted(others or {}))
    for index, labels in enumerate(groups):
        amber, black = (others or {})[labels]
        values |= {f"black_before_{index}": now - black, f"amber_before_{index}": now + amber}
        values |= {f"labels_{index}": list(labels)}
    statement = _COUNTS if not groups else _counts_by_version(groups)
    out = QueueCounts()
    for breach_status, classification, unallocated, extremes, n in session.connection().execute(statement, values):
        out.by_breach_status[breach_status] += n
        out.by_classification[classification] += n
        out.extreme_ages_waiting += int(extremes or 0)
        if classification == "urgent-cn-review":
            out.urgent_cn_review_not_allocated += int(unallocated or 0)
    return out


def _status(cases: FromClause, suffix: str = "") -> ColumnElement[Any]:
    """CAS-09 breach status from the bound thresholds `black_before{suffix}` and `amber_before{suffix}`."""
    instant = _RESOURCES.c.breach_at.type
    return case(
        (cases.c.breach_at < bindparam(f"black_before{suffix}", type_=instant), literal_column("'black'")),
        (cases.c.breach_at <= bindparam("now", type_=instant), literal_column("'red'")),
        (cases.c.breach_at <= bindparam(f"amber_before{suffix}", type_=instant), literal_column("'amber'")),
        else_=literal_column("'green'"),
    )


_BY_VERSION: dict[int, Select[Any]] = {}


def _counts_by_version(groups: tuple[tuple[str, ...], ...]) -> Select[Any]:
    """The counts where some open cases follow other versions' thresholds: built once per number of groups."""
    statement = _BY_VERSION.get(len(groups))
    if statement is None:
        statement = _BY_VERSION[len(groups)] = _counts(len(groups))
    return statement


def _counts(groups: int = 0) -> Select[Any]:
    cases = _RESOURCES.alias("cases")
    allocated, born = _TOKENS.alias("allocated"), _TOKENS.alias("born")  # Task.performerType; Patient.birthDate (YYYY-MM-DD)
    version = _TOKENS.alias("version")  # Task token `rule-set`: the version the case follows
    status = _status(cases)
    if groups:  # a case following another version takes its thresholds (CAS-09, issue 37)
        whens = [(version.c.code.in_(bindparam(f"labels_{i}", expanding=True)), _status(cases, f"_{i}")) for i in range(groups)]
        status = case(*whens, else_=status)
    joined = cases.outerjoin(
        born, and_(born.c.resource_type == "Patient", born.c.resource_id == cases.c.subject_id, born.c.param == "birthdate")
    )
    if groups:
        on = and_(version.c.resource_type == "Task", version.c.resource_id == cases.c.id, version.c.param == "rule-set")
        joined = joined.outerjoin(version, on)
    extreme = case((born.c.code > bindparam("young_after"), 1), (born.c.code <= bindparam("old_from"), 1), else_=0)
    unallocated = ~exists(
        select(literal(1))
        .select_from(allocated)
        .where(allocated.c.resource_type == "Task", allocated.c.resource_id == cases.c.id, allocated.c.param == "performer-type")
    )
    rows = (
        select(
            status.label("breach_status"),
            cases.c.business_status.label("classification"),
            case((unallocated, 1), else_=0).label("unallocated"),
            extreme.label("extreme"),
        )
        .select_from(joined)
        .where(open_cases(cases), cases.c.service_id == bindparam("service"))
        .subquery()
    )
    grouped = select(rows.c.breach_status, rows.c.classification, func.sum(rows.c.unallocated), func.sum(rows.c.extreme), func.count())
    return grouped.group_by(rows.c.breach_status, rows.c.classification)


_COUNTS = _counts()


def worsening_calls(session: Session, service_id: str, since: datetime) -> int:
    """CAS-10: decisions recorded since `since` (Provenance) that name CAS-10 and concern an open case of the service."""
    return int(session.connection().execute(_WORSENING, {"service": service_id, "since": since}).scalar_one())


def _worsening() -> Select[Any]:
    provenance = _RESOURCES.alias("provenance")
    cases = _RESOURCES.alias("cases")
    targets, reasons = _TOKENS.alias("targets"), _TOKENS.alias("reasons")
    names_cas_10 = exists(
        select(literal(1))
        .select_from(reasons)
        .where(
            reasons.c.resource_type == "Provenance",
            reasons.c.resource_id == provenance.c.id,
            reasons.c.param == "reason",
            reasons.c.code == "CAS-10",
        )
    )
    on_open_case = exists(
        select(literal(1))
        .select_from(targets.join(cases, targets.c.code == literal("Task/") + cases.c.id))
        .where(
            targets.c.resource_type == "Provenance",
            targets.c.resource_id == provenance.c.id,
            targets.c.param == "target",
            open_cases(cases),
            cases.c.service_id == bindparam("service"),
        )
    )
    since = bindparam("since", type_=_RESOURCES.c.effective_at.type)
    return (
        select(func.count())
        .select_from(provenance)
        .where(provenance.c.resource_type == "Provenance", provenance.c.effective_at >= since, names_cas_10, on_open_case)
    )


_WORSENING = _worsening()


def latest_tokened(session: Session, resource_type: str, service_id: str, system: str, code: str) -> dict[str, Any] | None:
    """The service's latest resource (by effective date, then id) coded `system`|`code`: the one JSON read."""
    c = _RESOURCES.c
    tokens = _TOKENS.alias()
    coded = select(tokens.c.resource_id).where(
        tokens.c.resource_type == resource_type, tokens.c.param == "code", tokens.c.system == system, tokens.c.code == code
    )
    stmt = (
        select(c.content)
        .where(c.resource_type == resource_type, c.service_id == service_id, c.id.in_(coded))
        .order_by(c.effective_at.desc(), c.id.desc())
        .limit(1)
    )
    content = session.execute(stmt).scalar_one_or_none()
    return None if content is None else dict(json.loads(content))
