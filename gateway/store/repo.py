"""Named queries: put/get resources, search Tasks, the CAS queue, inbound message records."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, Select, Table, and_, delete, func, insert, or_, select
from sqlalchemy.orm import Session

from fhir_mapping.datetimes import parse_source_datetime, to_fhir_instant
from gateway.store.models import Base, IdentifierRow, InboundMessage, ResourceRow, TokenRow

__all__ = [
    "put_resource",
    "put_resources",
    "get_resource",
    "TaskQuery",
    "search_tasks",
    "queue_rows",
    "find_by_identifier",
    "find_inbound",
    "ACTIVE_TASK_STATUSES",
    "count_rows",
    "sortable_task_params",
    "ResourceQuery",
    "search_resources",
    "open_cas_tasks",
    "get_for_update",
]

ACTIVE_TASK_STATUSES = ("requested", "received", "accepted", "ready", "in-progress", "on-hold")


def _dumps(resource: dict[str, Any]) -> str:
    return json.dumps(resource, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def put_resource(session: Session, resource: dict[str, Any], now: datetime, service_id: str | None = None) -> tuple[dict[str, Any], str]:
    """Create or update (`resource` has its stable id); returns (stored resource, "created"|"updated"|"unchanged").

    Same content as stored -> unchanged (same version); otherwise version + 1.

    Locks the row on PostgreSQL so two writers cannot both take the same next version.
    """
    return put_resources(session, [(resource, service_id)], now)[0]


def put_resources(session: Session, writes: Sequence[tuple[dict[str, Any], str | None]], now: datetime) -> list[tuple[dict[str, Any], str]]:
    """`put_resource` for several (resource, service id) pairs, in order, as if one after the other.

    One locking read of the rows they touch, one of their identifier rows, and one flush, instead
    of four or five statements per resource: a referral writes seven resources, and the
    statements were most of an ingest's time (bench/README.md). A resource given twice is
    written twice (created, then updated), as one-by-one calls would.
    """
    if not writes:
        return []
    session.flush()  # what earlier calls in this transaction added is visible to the reads below
    with session.no_autoflush:
        keys = {(r["resourceType"], r["id"]) for r, _ in writes}
        found = session.execute(
            select(ResourceRow)
            .where(*_columns_in((ResourceRow.resource_type, ResourceRow.id), keys))
            .order_by(ResourceRow.resource_type, ResourceRow.id)  # PostgreSQL locks in one order: no deadlock between writers
            .with_for_update()
        ).scalars()
        rows = {key: row for row in found if (key := (row.resource_type, row.id)) in keys}
        new_rows: dict[tuple[str, str], ResourceRow] = {}  # inserted below in one statement, not one ORM object each
        out: list[tuple[dict[str, Any], str]] = []
        written: list[dict[str, Any]] = []
        for resource, service_id in writes:
            rtype, rid = resource["resourceType"], resource["id"]
            row = rows.get((rtype, rid))
            body = {k: v for k, v in resource.items() if k != "meta"}
            meta = dict(resource.get("meta") or {})
            if row is not None:
                stored = json.loads(row.content)
                if {k: v for k, v in stored.items() if k != "meta"} == body:
                    out.append((stored, "unchanged"))
                    continue
                row.version_id += 1  # a row created earlier in this batch is inserted once, at its last version
                outcome = "updated"
            else:
                row = rows[(rtype, rid)] = new_rows[(rtype, rid)] = ResourceRow(resource_type=rtype, id=rid, version_id=1)
                outcome = "created"
            meta.update(versionId=str(row.version_id), lastUpdated=to_fhir_instant(now))
            full = {"resourceType": rtype, "id": rid, "meta": meta, **{k: v for k, v in body.items() if k not in ("resourceType", "id")}}
            row.last_updated = now
            row.content = _dumps(full)
            _index(row, full, service_id)
            written.append(full)
            out.append((full, outcome))
        if new_rows:
            session.execute(insert(_table(ResourceRow)), [_columns(row) for row in new_rows.values()])
        _put_identifiers(session, written)
        _put_tokens(session, written)
    session.flush()  # the updates of rows that were there already
    return out


def _columns_in(columns: tuple[Any, ...], keys: Collection[tuple[str, ...]]) -> list[ColumnElement[bool]]:
    """a IN (...) AND b IN (...): every key and maybe a few other combinations (the caller keeps only its keys).

    SQLite answers this from the primary key; a row-value IN, (a, b) IN (...), makes it scan the table. The
    IN lists are expanding parameters, so the statement is compiled once, whatever the number of keys.
    """
    return [column.in_(sorted({key[i] for key in keys})) for i, column in enumerate(columns)]


def _key_in(columns: tuple[Any, ...], keys: Collection[tuple[str, ...]]) -> ColumnElement[bool]:
    """(a = ? AND b = ?) OR ...: exactly the keys, from the primary key (for a delete, which must not touch other rows)."""
    return or_(*(and_(*(column == value for column, value in zip(columns, key, strict=True))) for key in sorted(keys)))


def _table(model: type[Base]) -> Table:
    """The model's table, for plain statements (no ORM objects, no unit of work)."""
    return cast(Table, model.__table__)


_ROW_COLUMNS = [c.key for c in _table(ResourceRow).columns]


def _columns(row: ResourceRow) -> dict[str, Any]:
    """A new, never-added ResourceRow as an insert's parameters (UTCDateTime still converts the times)."""
    return {name: getattr(row, name) for name in _ROW_COLUMNS}


def _index(row: ResourceRow, res: dict[str, Any], service_id: str | None) -> None:
    row.status = res.get("status")
    row.priority = res.get("priority")
    codings = (res.get("businessStatus") or {}).get("coding") or []
    row.business_status = codings[0].get("code") if codings else None
    subject = (res.get("for") or res.get("subject") or res.get("patient") or {}).get("reference", "")
    row.subject_id = subject.split("/", 1)[1] if subject.startswith("Patient/") else None
    if service_id is not None:
        row.service_id = service_id
    row.authored_on = parse_source_datetime(res["authoredOn"]) if res.get("authoredOn") else None
    end = ((res.get("restriction") or {}).get("period") or {}).get("end")
    row.breach_at = parse_source_datetime(end) if end and _is_cas_case(res) else None
    effective = res.get("effectiveDateTime") or res.get("authored") or res.get("recorded")
    row.effective_at = parse_source_datetime(effective) if isinstance(effective, str) and "T" in effective else None


def _is_cas_case(res: dict[str, Any]) -> bool:
    """Only CAS queue cases have a breach time on the queue (CAS-02); other Tasks' due times are not queue breaches."""
    return any(c.get("code") == "cas-callback" for c in (res.get("code") or {}).get("coding", []))


def _tokens(res: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(param, system, code) rows for token search: Observation.code, QuestionnaireResponse.questionnaire."""
    if res["resourceType"] == "Observation":
        return [("code", c.get("system", ""), c["code"]) for c in (res.get("code") or {}).get("coding", []) if c.get("code")]
    if res["resourceType"] == "QuestionnaireResponse" and res.get("questionnaire"):
        return [("questionnaire", "", res["questionnaire"].split("|", 1)[0])]
    if res["resourceType"] == "DocumentReference":
        return [("related", "", r["reference"]) for r in (res.get("context") or {}).get("related", []) if r.get("reference")]
    if res["resourceType"] == "Encounter":
        return [("episode-of-care", "", e["reference"]) for e in res.get("episodeOfCare", []) if e.get("reference")]
    if res["resourceType"] == "Provenance":
        return [("target", "", t["reference"].split("/_history/", 1)[0]) for t in res.get("target", []) if t.get("reference")]
    return []


def _put_tokens(session: Session, written: list[dict[str, Any]]) -> None:
    """Each written resource's token rows replace its old ones (the last write of a resource wins)."""
    final = {(res["resourceType"], res["id"]): set(_tokens(res)) for res in written}
    final = {key: rows for key, rows in final.items() if rows}
    if not final:
        return
    # plain statements (TokenRow objects are never loaded, so no ORM state can go stale)
    session.execute(delete(_table(TokenRow)).where(_key_in((TokenRow.resource_type, TokenRow.resource_id), final)))
    session.execute(
        insert(_table(TokenRow)),
        [
            {"resource_type": rtype, "resource_id": rid, "param": p, "system": s, "code": c}
            for (rtype, rid), rows in final.items()
            for p, s, c in sorted(rows)
        ],
    )


def _put_identifiers(session: Session, written: list[dict[str, Any]]) -> None:
    """One row per (type, system, value); an identifier already held by another resource of the type is refused."""
    wanted: list[tuple[tuple[str, str, str], str]] = []
    for res in written:
        identifiers = res.get("identifier") or []
        for ident in identifiers if isinstance(identifiers, list) else [identifiers]:  # QuestionnaireResponse has one
            if ident.get("system") and ident.get("value"):
                wanted.append(((res["resourceType"], ident["system"], ident["value"]), res["id"]))
    if not wanted:
        return
    keys = {key for key, _ in wanted}
    columns = (IdentifierRow.resource_type, IdentifierRow.system, IdentifierRow.value)
    query = select(*columns, IdentifierRow.resource_id).where(*_columns_in(columns, keys))
    holders = {key: rid for t, s, v, rid in session.execute(query) if (key := (t, s, v)) in keys}
    new: list[dict[str, str]] = []
    for key, rid in wanted:
        holder = holders.get(key)
        if holder is None:
            new.append({"resource_type": key[0], "system": key[1], "value": key[2], "resource_id": rid})
            holders[key] = rid
        elif holder != rid:
            raise ValueError(f"identifier {key[1]} is already used by another {key[0]}")
    if new:
        session.execute(insert(_table(IdentifierRow)), new)


def get_resource(session: Session, resource_type: str, resource_id: str) -> dict[str, Any] | None:
    row = session.get(ResourceRow, (resource_type, resource_id))
    return json.loads(row.content) if row else None


def find_by_identifier(session: Session, resource_type: str, system: str | None, value: str) -> list[dict[str, Any]]:
    query = select(IdentifierRow.resource_id).where(IdentifierRow.resource_type == resource_type, IdentifierRow.value == value)
    if system:
        query = query.where(IdentifierRow.system == system)
    ids = sorted(set(session.execute(query).scalars()))
    return [r for r in (get_resource(session, resource_type, i) for i in ids) if r]


@dataclass
class TaskQuery:
    status: list[str] | None = None
    business_status: list[str] | None = None
    priority: list[str] | None = None
    patient: str | None = None
    sort: list[tuple[str, bool]] | None = None  # (column, descending)
    count: int = 50
    offset: int = 0


_SORTABLE = {
    "authored-on": ResourceRow.authored_on,
    "_lastUpdated": ResourceRow.last_updated,
    "priority": ResourceRow.priority,
    "status": ResourceRow.status,
    "breach-time": ResourceRow.breach_at,
}


def search_tasks(session: Session, query: TaskQuery) -> tuple[list[dict[str, Any]], int]:
    """Tasks matching `query` (one page) and the total match count."""
    stmt: Select[Any] = select(ResourceRow).where(ResourceRow.resource_type == "Task")
    if query.status:
        stmt = stmt.where(ResourceRow.status.in_(query.status))
    if query.business_status:
        stmt = stmt.where(ResourceRow.business_status.in_(query.business_status))
    if query.priority:
        stmt = stmt.where(ResourceRow.priority.in_(query.priority))
    if query.patient:
        stmt = stmt.where(ResourceRow.subject_id == query.patient.removeprefix("Patient/"))
    total = session.execute(select(func.count()).select_from(stmt.subquery())).scalar_one()
    order: list[Any] = []
    for name, descending in query.sort or []:
        column = _SORTABLE[name]
        order.append(column.desc() if descending else column.asc())
    order.append(ResourceRow.id.asc())
    rows = session.execute(stmt.order_by(*order).limit(query.count).offset(query.offset)).scalars()
    return [json.loads(r.content) for r in rows], total


@dataclass
class ResourceQuery:
    """Search on any stored type: patient, token params (system may be None), dates (prefix, instant)."""

    resource_type: str
    patient: str | None = None
    status: list[str] | None = None
    service: str | None = None
    tokens: list[tuple[str, str | None, str]] | None = None
    dates: list[tuple[str, datetime]] | None = None
    count: int = 50
    offset: int = 0


_DATE_OPS = {"eq": "__eq__", "ge": "__ge__", "le": "__le__", "gt": "__gt__", "lt": "__lt__"}


def search_resources(session: Session, query: ResourceQuery) -> tuple[list[dict[str, Any]], int]:
    """Matches (one page, oldest first by effective date) and the total count."""
    stmt: Select[Any] = select(ResourceRow).where(ResourceRow.resource_type == query.resource_type)
    if query.patient:
        stmt = stmt.where(ResourceRow.subject_id == query.patient.removeprefix("Patient/"))
    if query.status:
        stmt = stmt.where(ResourceRow.status.in_(query.status))
    if query.service:
        stmt = stmt.where(ResourceRow.service_id == query.service)
    for param, system, code in query.tokens or []:
        match = select(TokenRow.resource_id).where(
            TokenRow.resource_type == query.resource_type, TokenRow.param == param, TokenRow.code == code
        )
        if system is not None:
            match = match.where(TokenRow.system == system)
        stmt = stmt.where(ResourceRow.id.in_(match))
    for op, moment in query.dates or []:
        stmt = stmt.where(getattr(ResourceRow.effective_at, _DATE_OPS[op])(moment))
    total = session.execute(select(func.count()).select_from(stmt.subquery())).scalar_one()
    stmt = stmt.order_by(ResourceRow.effective_at.asc(), ResourceRow.id.asc()).limit(query.count).offset(query.offset)
    return [json.loads(r.content) for r in session.execute(stmt).scalars()], total


def get_for_update(session: Session, resource_type: str, resource_id: str) -> tuple[dict[str, Any], str | None] | None:
    """A resource and its service, locked on PostgreSQL until the transaction ends (operations read-modify-write)."""
    row = session.execute(
        select(ResourceRow).where(ResourceRow.resource_type == resource_type, ResourceRow.id == resource_id).with_for_update()
    ).scalar_one_or_none()
    return (json.loads(row.content), row.service_id) if row else None


def open_cas_tasks(session: Session, patient_id: str) -> list[dict[str, Any]]:
    """The patient's open CAS queue Tasks, locked for update on PostgreSQL (a risk answer may escalate them)."""
    stmt = (
        select(ResourceRow)
        .where(
            ResourceRow.resource_type == "Task",
            ResourceRow.subject_id == patient_id,
            ResourceRow.status.in_(ACTIVE_TASK_STATUSES),
            ResourceRow.breach_at.is_not(None),
        )
        .order_by(ResourceRow.id)
        .with_for_update()
    )
    return [json.loads(r.content) for r in session.execute(stmt).scalars()]


def sortable_task_params() -> list[str]:
    return list(_SORTABLE)


def queue_rows(session: Session, service_id: str | None) -> list[dict[str, Any]]:
    """CAS-02: open CAS queue Tasks, earliest breach time first (so breached cases lead, most overdue first)."""
    stmt = select(ResourceRow).where(
        ResourceRow.resource_type == "Task",
        ResourceRow.status.in_(ACTIVE_TASK_STATUSES),
        ResourceRow.breach_at.is_not(None),
    )
    if service_id:
        stmt = stmt.where(ResourceRow.service_id == service_id)
    stmt = stmt.order_by(ResourceRow.breach_at.asc(), ResourceRow.authored_on.asc(), ResourceRow.id.asc())
    return [json.loads(r.content) | {"_service": r.service_id} for r in session.execute(stmt).scalars()]


def find_inbound(session: Session, channel: str, message_id: str, header_id: str | None) -> InboundMessage | None:
    """The stored message this one re-sends: same channel and the same message id or MessageHeader id."""
    row = session.execute(
        select(InboundMessage).where(InboundMessage.channel == channel, InboundMessage.message_id == message_id)
    ).scalar_one_or_none()
    if row is None and header_id:
        row = session.execute(
            select(InboundMessage).where(InboundMessage.channel == channel, InboundMessage.header_id == header_id)
        ).scalar_one_or_none()
    return row


def count_rows(session: Session) -> dict[str, int]:
    """Row counts by resource type plus inbound messages (tests and `/readyz` use it)."""
    out = dict(session.execute(select(ResourceRow.resource_type, func.count()).group_by(ResourceRow.resource_type)).all())
    out["InboundMessage"] = session.execute(select(func.count()).select_from(InboundMessage)).scalar_one()
    return out
