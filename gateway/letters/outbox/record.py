"""Recording what happened to a delivery: its outbox event with an AuditEvent (and `iap_deliveries_total`), and the
letter's CommunicationRequest settled once every delivery of it is done."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.letters.outbox import store
from gateway.platform.audit import record_delivery
from gateway.platform.store.models import OutboxRow
from gateway.platform.store.repo import get_resource, put_resource

__all__ = ["DONE", "event", "settle"]

DONE = ("delivered", "withheld", "superseded")


def event(session: Session, row: OutboxRow, kind: str, outcome: str, detail: str, now: datetime) -> None:
    """Record what happened to a delivery: its outbox event, and an AuditEvent (and `iap_deliveries_total`) with it."""
    store.event(session, row.id, kind, outcome, detail, now)
    destination = (
        row.address if row.address and row.transport != "print" else (row.recipient if row.recipient_kind == "gp" else row.recipient_kind)
    )
    entities = [f"DocumentReference/{row.letter_id}"] + ([f"Patient/{row.patient_id}"] if row.patient_id else [])
    record_delivery(
        session,
        channel=row.transport or "none",
        destination=destination,
        entities=entities,
        outcome=outcome,
        detail=f"{kind}: {detail}",
        now=now,
    )


def settle(session: Session, letter_id: str, now: datetime) -> None:
    """Once every delivery of a letter is done, its CommunicationRequest is completed (or revoked, if all were withheld)."""
    statuses = set(session.execute(select(OutboxRow.status).where(OutboxRow.letter_id == letter_id)).scalars())
    if not statuses or not statuses <= set(DONE):
        return
    letter = get_resource(session, "DocumentReference", letter_id) or {}
    related = ((letter.get("context") or {}).get("related") or [{}])[0].get("reference", "")
    request = (
        get_resource(session, "CommunicationRequest", related.split("/", 1)[1]) if related.startswith("CommunicationRequest/") else None
    )
    if request is None or request.get("status") != "active" or statuses == {"superseded"}:
        return
    body = {k: v for k, v in request.items() if k != "meta"}
    if "delivered" in statuses:
        body["status"] = "completed"
    else:
        body["status"] = "revoked"
        body["statusReason"] = {"text": "Not sent: consent (TT-14, TT-15); see the letter's Provenance"}
    put_resource(session, body, now)
