"""The durable outbox table: enqueue (in the caller's transaction), claim, record, list, replay, purge.

Claiming is safe across gateway instances: on PostgreSQL the due rows are selected
`FOR UPDATE SKIP LOCKED` (another worker's rows are skipped, not waited for), and every backend
takes a row only with a conditional UPDATE on the status it saw, so two workers can never both
own one row. A claim is a lease: a worker that dies mid-send leaves its row `sending` until the
lease ends; the next claim takes it "in doubt" and asks the transport whether it already went.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from common.datetimes import to_fhir_instant
from fhir_mapping.ids import resource_id
from gateway.platform.store.models import OutboxEvent, OutboxRow
from gateway.platform.store.repo import count_matches

__all__ = [
    "STATUSES",
    "KEPT",
    "Claim",
    "delivery_id",
    "enqueue",
    "event",
    "claim",
    "supersede",
    "list_rows",
    "row_json",
    "events_json",
    "replay",
    "purge",
    "WAITING",
    "summary",
]

# unacknowledged: sent, but no acknowledgement came within IAP_OUTBOX_ACK_DUE_HOURS (GPCM-SD-095; a late one still counts)
STATUSES = ("pending", "sending", "sent", "unacknowledged", "delivered", "failed", "dead", "withheld", "superseded")
KEPT = ("pending", "sending", "sent", "unacknowledged", "failed", "dead", "withheld")  # retention never deletes these
PURGEABLE = ("delivered", "superseded")
WAITING = ("pending", "sending")  # not yet handed to a transport: the outbox's depth


def summary(session: Session) -> tuple[dict[str, int], datetime | None]:
    """Rows by status, and when the oldest row still waiting to go was created (None when none waits): /metrics."""
    counts = {status: int(n) for status, n in session.execute(select(OutboxRow.status, func.count()).group_by(OutboxRow.status))}
    oldest = session.execute(select(func.min(OutboxRow.created_at)).where(OutboxRow.status.in_(WAITING))).scalar_one()
    return counts, oldest


def delivery_id(letter_id: str, recipient_key: str) -> str:
    return resource_id("Outbox", f"Bundle/{letter_id}", recipient_key)


def event(session: Session, delivery: str, kind: str, outcome: str, detail: str, now: datetime) -> None:
    session.add(OutboxEvent(delivery_id=delivery, at=now, kind=kind, outcome=outcome, detail=detail[:4000]))


def enqueue(
    session: Session,
    *,
    delivery_id: str,
    letter_id: str,
    letter_type: str,
    patient_id: str,
    recipient_kind: str,
    recipient: str,
    now: datetime,
) -> None:
    """A new delivery, due now, in the caller's transaction (the same one as the event that caused the letter)."""
    session.add(
        OutboxRow(
            id=delivery_id,
            letter_id=letter_id,
            letter_type=letter_type,
            patient_id=patient_id,
            recipient_kind=recipient_kind,
            recipient=recipient,
            status="pending",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
        )
    )
    event(session, delivery_id, "queued", "pending", f"{letter_type} to {recipient_kind}", now)


def supersede(session: Session, old_letter_id: str, new_letter_id: str, now: datetime) -> None:
    """Deliveries of a replaced letter that have not gone yet will not go (the new letter's rows carry it)."""
    rows = session.execute(
        select(OutboxRow).where(OutboxRow.letter_id == old_letter_id, OutboxRow.status == "pending").with_for_update()
    ).scalars()
    for row in rows:
        row.status, row.reason, row.updated_at = "superseded", f"replaced by letter {new_letter_id}", now
        event(session, row.id, "superseded", "superseded", f"replaced by letter {new_letter_id}", now)


@dataclass(frozen=True)
class Claim:
    id: str
    letter_id: str
    letter_type: str
    patient_id: str | None
    recipient_kind: str
    recipient: str
    attempt: int
    in_doubt: bool  # the previous holder may have sent it before dying: ask the transport first
    message_id: str | None


def claim(
    sessions: sessionmaker[Session], worker: str, now: datetime, lease: timedelta, limit: int = 20, only: str | None = None
) -> list[Claim]:
    """Take up to `limit` due deliveries for this worker (each attempt is recorded before anything is sent)."""
    due = or_(
        (OutboxRow.status == "pending") & or_(OutboxRow.next_attempt_at.is_(None), OutboxRow.next_attempt_at <= now),
        (OutboxRow.status == "sending") & (OutboxRow.lease_until < now),
    )
    claims = []
    with sessions.begin() as session:
        stmt = select(OutboxRow).where(due)
        if only is not None:
            stmt = stmt.where(OutboxRow.id == only)
        rows = session.execute(
            stmt.order_by(OutboxRow.next_attempt_at.asc(), OutboxRow.id.asc()).limit(limit).with_for_update(skip_locked=True)
        ).scalars()
        for row in list(rows):
            seen_status, seen_attempts = row.status, row.attempts
            taken = session.execute(  # type: ignore[attr-defined]
                update(OutboxRow)
                .where(OutboxRow.id == row.id, OutboxRow.status == seen_status, OutboxRow.attempts == seen_attempts)
                .values(status="sending", claimed_by=worker, lease_until=now + lease, attempts=seen_attempts + 1, updated_at=now)
                .execution_options(synchronize_session=False)
            ).rowcount
            if taken != 1:
                continue  # another worker took it between our look and our update
            in_doubt = seen_status == "sending"
            detail = f"attempt {seen_attempts + 1} by {worker}" + (" (the previous attempt's outcome is unknown)" if in_doubt else "")
            event(session, row.id, "attempt", "started", detail, now)
            claims.append(
                Claim(
                    row.id,
                    row.letter_id,
                    row.letter_type,
                    row.patient_id,
                    row.recipient_kind,
                    row.recipient,
                    seen_attempts + 1,
                    in_doubt,
                    row.message_id,
                )
            )
    return claims


def list_rows(
    session: Session, status: list[str] | None = None, patient: str | None = None, count: int = 100, offset: int = 0
) -> tuple[list[OutboxRow], int]:
    stmt = select(OutboxRow)
    if status:
        stmt = stmt.where(OutboxRow.status.in_(status))
    if patient:
        stmt = stmt.where(OutboxRow.patient_id == patient.removeprefix("Patient/"))
    total = count_matches(session, stmt)
    rows = session.execute(stmt.order_by(OutboxRow.created_at.desc(), OutboxRow.id.asc()).limit(count).offset(offset)).scalars()
    return list(rows), total


def _instant(value: datetime | None) -> str | None:
    return to_fhir_instant(value) if value else None


def row_json(row: OutboxRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "letter": f"DocumentReference/{row.letter_id}",
        "document": f"Bundle/{row.letter_id}" if row.recipient_kind != "epr" else None,  # a note to an EPR is the note itself
        "letter_type": row.letter_type,
        "patient": f"Patient/{row.patient_id}" if row.patient_id else None,
        "recipient_kind": row.recipient_kind,
        "recipient": row.recipient,
        "status": row.status,
        "attempts": row.attempts,
        "next_attempt_at": _instant(row.next_attempt_at) if row.status == "pending" else None,
        "transport": row.transport,
        "address": row.address,
        "workflow_id": row.workflow_id,
        "message_id": row.message_id,
        "itk_message_id": row.itk_message_id,
        "reason": row.reason,
        "outcome": json.loads(row.outcome) if row.outcome else None,
        "created_at": _instant(row.created_at),
        "updated_at": _instant(row.updated_at),
    }


def events_json(session: Session, delivery: str) -> list[dict[str, Any]]:
    rows = session.execute(select(OutboxEvent).where(OutboxEvent.delivery_id == delivery).order_by(OutboxEvent.seq.asc())).scalars()
    return [{"at": to_fhir_instant(e.at), "kind": e.kind, "outcome": e.outcome, "detail": e.detail} for e in rows]


def replay(session: Session, delivery: str, who: str, now: datetime) -> OutboxRow | None:
    """Send again from the stored letter: due now, attempts reset; the previous state is kept in the events."""
    row = session.execute(select(OutboxRow).where(OutboxRow.id == delivery).with_for_update()).scalar_one_or_none()
    if row is None:
        return None
    if row.status in ("pending", "sending"):
        raise ValueError(f"delivery {delivery} is {row.status}: it is already on its way")
    if row.status == "superseded":
        raise ValueError(f"delivery {delivery} is superseded ({row.reason}); replay the newer letter's delivery")
    event(
        session, row.id, "replay", "pending", f"by {who}; was {row.status} after {row.attempts} attempt(s): {row.reason or ''}".strip(), now
    )
    row.status, row.attempts, row.next_attempt_at, row.lease_until, row.claimed_by = "pending", 0, now, None, None
    row.reason, row.outcome, row.updated_at = None, None, now
    return row


def purge(session: Session, before: datetime) -> int:
    """Retention: delete delivered and superseded deliveries last changed before `before`; never failed, dead or withheld ones."""
    ids = list(session.execute(select(OutboxRow.id).where(OutboxRow.status.in_(PURGEABLE), OutboxRow.updated_at < before)).scalars())
    if ids:
        session.execute(delete(OutboxEvent).where(OutboxEvent.delivery_id.in_(ids)))
        session.execute(delete(OutboxRow).where(OutboxRow.id.in_(ids)))
    return len(ids)
