"""Reading the audit trail: AuditEvents by date, agent (client id), entity or patient, outcome, action, subtype."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from gateway.platform.store.models import AuditEntityRow, AuditEventRow
from gateway.platform.store.repo import count_matches

__all__ = ["AuditQuery", "search_audit_events", "get_audit_event"]

_DATE_OPS = {"eq": "__eq__", "ge": "__ge__", "le": "__le__", "gt": "__gt__", "lt": "__lt__"}


@dataclass
class AuditQuery:
    agent: str | None = None  # the client id (AuditEvent.agent.who.identifier.value)
    entities: list[str] | None = None  # "Type/id" references; all must be named by the event
    outcome: list[str] | None = None
    action: list[str] | None = None
    subtype: list[str] | None = None
    dates: list[tuple[str, datetime]] | None = None
    newest_first: bool = False
    count: int = 50
    offset: int = 0
    ids: list[str] | None = None  # `_id`: any of these


def search_audit_events(session: Session, query: AuditQuery) -> tuple[list[dict[str, Any]], int]:
    stmt: Select[Any] = select(AuditEventRow)
    if query.agent:
        stmt = stmt.where(AuditEventRow.client_id == query.agent)
    for reference in query.entities or []:
        stmt = stmt.where(AuditEventRow.id.in_(select(AuditEntityRow.event_id).where(AuditEntityRow.reference == reference)))
    if query.outcome:
        stmt = stmt.where(AuditEventRow.outcome.in_(query.outcome))
    if query.action:
        stmt = stmt.where(AuditEventRow.action.in_(query.action))
    if query.subtype:
        stmt = stmt.where(AuditEventRow.subtype.in_(query.subtype))
    for op, moment in query.dates or []:
        stmt = stmt.where(getattr(AuditEventRow.recorded, _DATE_OPS[op])(moment))
    if query.ids is not None:
        stmt = stmt.where(AuditEventRow.id.in_(query.ids))
    total = count_matches(session, stmt)
    order = AuditEventRow.seq.desc() if query.newest_first else AuditEventRow.seq.asc()
    rows = session.execute(stmt.order_by(order).limit(query.count).offset(query.offset)).scalars()
    return [json.loads(row.content) for row in rows], total


def get_audit_event(session: Session, event_id: str) -> dict[str, Any] | None:
    row = session.execute(select(AuditEventRow).where(AuditEventRow.id == event_id)).scalar_one_or_none()
    return json.loads(row.content) if row else None
