"""Named queries: get resources, search Tasks, the CAS queue, inbound message records; the write path (put resources)
is `gateway.platform.store.writes`, its names offered here too."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import Connection, Select, bindparam, func, select
from sqlalchemy.orm import Session

from gateway.platform.store.keys import identifier_key, message_key
from gateway.platform.store.models import IdentifierRow, InboundMessage, ResourceRow, TokenRow
from gateway.platform.store.visibility import bound_service, resource_visible
from gateway.platform.store.writes import (
    WRITES_KEY,
    FirstVersion,
    Merge,
    case_rule_set,
    first_versions,
    note_write,
    put_resource,
    put_resources,
    table_of,
)

__all__ = [
    "case_rule_set",
    "put_resource",
    "put_resources",
    "FirstVersion",
    "Merge",
    "first_versions",
    "note_write",
    "WRITES_KEY",
    "get_resource",
    "TaskQuery",
    "search_tasks",
    "queue_rows",
    "find_by_identifier",
    "find_inbound",
    "StoredMessage",
    "ACTIVE_TASK_STATUSES",
    "count_rows",
    "count_matches",
    "sortable_task_params",
    "ResourceQuery",
    "search_resources",
    "open_cas_tasks",
    "get_for_update",
]

log = structlog.get_logger("iap.store")

ACTIVE_TASK_STATUSES = ("requested", "received", "accepted", "ready", "in-progress", "on-hold")


_RESOURCES = table_of(ResourceRow)
_CONTENT = select(_RESOURCES.c.content).where(_RESOURCES.c.resource_type == bindparam("type"), _RESOURCES.c.id == bindparam("id"))
_INBOUND = select(
    InboundMessage.seq, InboundMessage.channel, InboundMessage.response_status, InboundMessage.response_body, InboundMessage.raw
).where(InboundMessage.channel == bindparam("channel"))
_INBOUND_BY_MESSAGE_ID = _INBOUND.where(InboundMessage.message_id == bindparam("key"))
_INBOUND_BY_HEADER_ID = _INBOUND.where(InboundMessage.header_id == bindparam("key"))


def get_resource(session: Session, resource_type: str, resource_id: str) -> dict[str, Any] | None:
    """The stored resource, or None if there is none or the session's reads are bound to a service that may not see it."""
    # on the session's connection: a plain statement needs none of Session.execute's ORM steps (it autoflushes only ORM ones)
    service_id = bound_service(session)
    stmt = _CONTENT if service_id is None else _CONTENT.where(resource_visible(service_id))
    content = session.connection().execute(stmt, {"type": resource_type, "id": resource_id}).scalar_one_or_none()
    return json.loads(content) if content is not None else None


def find_by_identifier(session: Session, resource_type: str, system: str | None, value: str) -> list[dict[str, Any]]:
    query = select(IdentifierRow.resource_id).where(
        IdentifierRow.resource_type == resource_type, IdentifierRow.value == identifier_key(value)
    )
    if system:
        query = query.where(IdentifierRow.system == identifier_key(system))
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
    ids: list[str] | None = None  # `_id`: any of these
    last_updated: list[tuple[str, datetime]] | None = None  # `_lastUpdated`: (prefix, instant), all of them


_SORTABLE = {
    "authored-on": ResourceRow.authored_on,
    "_lastUpdated": ResourceRow.last_updated,
    "priority": ResourceRow.priority,
    "status": ResourceRow.status,
    "breach-time": ResourceRow.breach_at,
}


def count_matches(session: Session, stmt: Select[Any]) -> int:
    """How many rows `stmt` matches in all (the total of a paged search)."""
    return int(session.execute(select(func.count()).select_from(stmt.subquery())).scalar_one())


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
    stmt = _common_filters(stmt, query.ids, query.last_updated)
    total = count_matches(session, stmt)
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
    ids: list[str] | None = None  # `_id`: any of these
    last_updated: list[tuple[str, datetime]] | None = None  # `_lastUpdated`: (prefix, instant), all of them


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
    stmt = _common_filters(stmt, query.ids, query.last_updated)
    total = count_matches(session, stmt)
    stmt = stmt.order_by(ResourceRow.effective_at.asc(), ResourceRow.id.asc()).limit(query.count).offset(query.offset)
    return [json.loads(r.content) for r in session.execute(stmt).scalars()], total


def _common_filters(stmt: Select[Any], ids: list[str] | None, last_updated: list[tuple[str, datetime]] | None) -> Select[Any]:
    """`_id` and `_lastUpdated`, which every searchable type takes."""
    if ids is not None:
        stmt = stmt.where(ResourceRow.id.in_(ids))
    for op, moment in last_updated or []:
        stmt = stmt.where(getattr(ResourceRow.last_updated, _DATE_OPS[op])(moment))
    return stmt


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


@dataclass(frozen=True)
class StoredMessage:
    """What a re-send needs of the message it repeats: its sequence number, the reply it got, and what it was."""

    seq: int
    channel: str
    response_status: int
    response_body: str
    raw: bytes


def find_inbound(connection: Connection, channel: str, message_id: str, header_id: str | None) -> StoredMessage | None:
    """The stored message this one re-sends: same channel and the same message id or MessageHeader id."""
    row = connection.execute(_INBOUND_BY_MESSAGE_ID, {"channel": channel, "key": message_key(message_id)}).first()
    if row is None and header_id:
        row = connection.execute(_INBOUND_BY_HEADER_ID, {"channel": channel, "key": message_key(header_id)}).first()
    return None if row is None else StoredMessage(row.seq, row.channel, row.response_status, row.response_body, bytes(row.raw))


def count_rows(session: Session) -> dict[str, int]:
    """Row counts by resource type plus inbound messages (tests and `/readyz` use it)."""
    out = dict(session.execute(select(ResourceRow.resource_type, func.count()).group_by(ResourceRow.resource_type)).all())
    out["InboundMessage"] = session.execute(select(func.count()).select_from(InboundMessage)).scalar_one()
    return out
