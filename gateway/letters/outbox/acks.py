"""Acknowledgements of letters sent by MESH (GPCM-SD-095): MESH tracking, MESH reports and ITK3 acknowledgements read
from our inbox, and the letters whose acknowledgements never came raised for a person.

Two cases are raised, each once per delivery, each as `unacknowledged` (the delivery's status, counted in
`iap_deliveries_total{outcome="unacknowledged"}`) with a Task for the sending service's desk:
- `letter-unacknowledged`: neither acknowledgement came within `ack_due` of sending;
- `letter-not-filed`: the practice's system received it (ITK infrastructure acknowledgement, or MESH download) but no
  business acknowledgement (the GP system filing it) came within `ack_due` of that.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from common import codes
from common.datetimes import to_fhir_instant
from fhir_mapping.ids import resource_id
from fhir_mapping.letters.itk_response import parse_itk_response
from gateway.letters.outbox.record import event, settle
from gateway.letters.outbox.transports import MeshSettings, mesh_client
from gateway.platform.clock import Clock
from gateway.platform.store.models import OutboxRow
from gateway.platform.store.repo import get_for_update, put_resource

__all__ = ["Acknowledgements", "OUTBOX_TASK_SYSTEM", "AWAITING_BUSINESS_ACK", "NOT_FILED", "unacknowledged_task"]

OUTBOX_TASK_SYSTEM = f"{codes.GATEWAY_BASE}/CodeSystem/outbox-task"  # work the outbox raises for a person
# a delivered letter's reason while its business acknowledgement is awaited; a business acknowledgement clears it
AWAITING_BUSINESS_ACK = "received by the practice's system; business acknowledgement awaited"
NOT_FILED = "received by the practice's system but no business acknowledgement"  # the reason raised (its start)
# MESH is asked about these: sent, or raised for no acknowledgement at all (not those received but not filed)
_UNTRACKED = or_(
    OutboxRow.status == "sent",
    (OutboxRow.status == "unacknowledged") & ~OutboxRow.reason.startswith(NOT_FILED),
)
log = structlog.get_logger("iap.outbox")


class Acknowledgements:
    """The acknowledgement half of the delivery worker (`Deliverer` is one)."""

    sessions: sessionmaker[Session]
    clock: Clock
    mesh: MeshSettings | None
    ack_due: timedelta
    _skipped: set[str]

    def _row(self, session: Session, delivery: str) -> OutboxRow:
        return session.execute(select(OutboxRow).where(OutboxRow.id == delivery).with_for_update()).scalar_one()

    def poll_acks(self) -> int:
        """MESH tracking of what we sent, then our inbox: MESH reports and ITK3 acknowledgements, recorded against each letter."""
        if self.mesh is None:
            return 0
        recorded = 0
        with self.sessions() as session:
            sent = list(
                session.execute(
                    select(OutboxRow.id, OutboxRow.message_id).where(_UNTRACKED, OutboxRow.transport == "mesh").limit(500)
                ).all()
            )
        try:
            with mesh_client(self.mesh) as client:
                for delivery, message_id in sent:
                    try:
                        status = str(client.track_message(message_id).get("status", "")).lower()
                    except Exception:  # noqa: BLE001 - tracking is best effort; the next pass asks again
                        continue
                    if status == "acknowledged":
                        recorded += self._ack(delivery, "mesh", "delivered", "MESH: downloaded and acknowledged by the recipient")
                    elif status in ("undeliverable", "error"):
                        recorded += self._ack(delivery, "mesh", "failed", f"MESH: message {status}")
                for message_id in client.list_messages():
                    if message_id in self._skipped:
                        continue
                    recorded += self._inbox_message(client, message_id)
        except Exception as exc:  # noqa: BLE001 - MESH down: acknowledgements wait for the next pass
            log.warning("outbox.acks_unavailable", error=type(exc).__name__)
        return recorded

    def _inbox_message(self, client: Any, message_id: str) -> int:
        message = client.retrieve_message(message_id)
        try:
            body = message.read()
        finally:
            message.close()
        workflow = str(message.workflow_id or "")
        recorded = 0
        if str(message.message_type).upper() == "REPORT":
            linked = message.mex_header("linkedmsgid") or ""
            code, text = message.mex_header("statuscode") or "", message.mex_header("statusdescription") or ""
            delivery = self._by(OutboxRow.message_id, linked) or self._by_letter(message.local_id)
            if delivery:
                recorded = self._ack(delivery, "mesh-report", "failed", f"MESH report {code}: {text}".strip())
        elif workflow.endswith("_ACK") and (ack := parse_itk_response(body)) is not None:
            header_id, response_code, itk_code, text = ack
            delivery = self._by(OutboxRow.itk_message_id, header_id)
            kind = "itk-business-ack" if itk_code.startswith("3") else "itk-infrastructure-ack"
            if delivery:
                outcome = "delivered" if response_code == "ok" else "failed"
                recorded = self._ack(delivery, kind, outcome, f"ITK {itk_code} {text} ({response_code})".strip())
        else:
            self._skipped.add(message_id)  # not ours to read: left in the inbox
            log.info("outbox.inbox_skipped", workflow=workflow[:40])
            return 0
        client.acknowledge_message(message_id)
        return recorded

    def raise_unacknowledged(self) -> int:
        """GPCM-SD-095: a letter sent by MESH with no acknowledgement (infrastructure or business) within `ack_due`
        is shown `unacknowledged`, counted (`iap_deliveries_total{outcome="unacknowledged"}`) and given to a person:
        a Task for the sending service's desk. Each delivery is raised once. Then the letters the practice's system
        received but never filed (`_raise_not_filed`)."""
        now = self.clock.now()
        with self.sessions.begin() as session:
            rows = (
                session.execute(
                    select(OutboxRow)
                    .where(OutboxRow.status == "sent", OutboxRow.transport == "mesh", OutboxRow.updated_at <= now - self.ack_due)
                    .with_for_update()
                    .limit(500)
                )
                .scalars()
                .all()
            )
            hours = f"{self.ack_due.total_seconds() / 3600:g}"
            reason = f"no acknowledgement {hours} hours after sending (GPCM-SD-095): check with the recipient"
            _mark_unacknowledged(session, rows, "ack-overdue", reason, now, filed=None)
        for row in rows:
            log.warning("outbox.unacknowledged", delivery=row.id, transport=row.transport)
        return len(rows) + self._raise_not_filed(now)

    def _raise_not_filed(self, now: datetime) -> int:
        """GPCM-SD-095: received (infrastructure acknowledgement or MESH download) but no business acknowledgement within
        `ack_due` of that: `unacknowledged` with its own reason and a `letter-not-filed` Task. Once per delivery."""
        with self.sessions.begin() as session:
            rows = (
                session.execute(
                    select(OutboxRow)
                    .where(
                        OutboxRow.status == "delivered",
                        OutboxRow.transport == "mesh",
                        OutboxRow.reason == AWAITING_BUSINESS_ACK,
                        OutboxRow.updated_at <= now - self.ack_due,
                    )
                    .with_for_update()
                    .limit(500)
                )
                .scalars()
                .all()
            )
            hours = f"{self.ack_due.total_seconds() / 3600:g}"
            reason = f"{NOT_FILED} {hours} hours later (GPCM-SD-095): check with the practice that it was filed"
            _mark_unacknowledged(session, rows, "business-ack-overdue", reason, now, filed=False)
        for row in rows:
            log.warning("outbox.not_filed", delivery=row.id, transport=row.transport)
        return len(rows)

    def _by(self, column: Any, value: str | None) -> str | None:
        if not value:
            return None
        with self.sessions() as session:
            return session.execute(select(OutboxRow.id).where(column == value).limit(1)).scalar_one_or_none()

    def _by_letter(self, letter_id: str | None) -> str | None:
        if not letter_id:
            return None
        with self.sessions() as session:
            return session.execute(
                select(OutboxRow.id).where(OutboxRow.letter_id == letter_id, OutboxRow.transport == "mesh").limit(1)
            ).scalar_one_or_none()

    def _ack(self, delivery: str, kind: str, outcome: str, detail: str) -> int:
        now = self.clock.now()
        with self.sessions.begin() as session:
            row = self._row(session, delivery)
            event(session, row, kind, outcome, detail, now)
            business = kind == "itk-business-ack"
            not_filed = row.status == "unacknowledged" and (row.reason or "").startswith(NOT_FILED)
            if outcome == "failed" and row.status in ("sent", "unacknowledged", "delivered"):
                row.status, row.reason, row.updated_at = "failed", detail, now
            elif outcome == "delivered" and row.status in ("sent", "unacknowledged") and (business or not not_filed):
                # a late acknowledgement still counts; received-but-not-filed waits for the business acknowledgement
                row.status, row.updated_at = "delivered", now
                row.reason = None if business else AWAITING_BUSINESS_ACK
                settle(session, row.letter_id, now)
            elif business and outcome == "delivered" and row.reason == AWAITING_BUSINESS_ACK:
                row.reason = None  # filed: nothing more awaited
        log.info("outbox.ack", delivery=delivery, kind=kind, outcome=outcome)
        return 1


def unacknowledged_task(row: OutboxRow, now: datetime, filed: bool | None = None) -> dict[str, Any]:
    """The service desk's work item for a letter nobody acknowledged (GPCM-SD-095), or (`filed=False`) one the practice's
    system received but never filed: one per delivery."""
    if filed is False:
        return _not_filed_task(row, now)
    task: dict[str, Any] = {
        "resourceType": "Task",
        "id": resource_id("Task", f"Outbox/{row.id}", "unacknowledged"),
        "status": "requested",
        "intent": "order",
        "priority": "urgent",
        "code": {"coding": [{"system": OUTBOX_TASK_SYSTEM, "code": "letter-unacknowledged", "display": "Letter not acknowledged"}]},
        "description": f"The {row.letter_type} letter sent to {row.recipient_kind} {row.address or ''} was not acknowledged: "
        "check with the recipient that it arrived, and resend or send it another way",
        "focus": {"reference": f"DocumentReference/{row.letter_id}"},
        "authoredOn": to_fhir_instant(now),
        "reasonCode": {"text": "GPCM-SD-095: the infrastructure and business acknowledgements did not arrive in time"},
    }
    if row.patient_id:
        task["for"] = {"reference": f"Patient/{row.patient_id}"}
    return task


def _not_filed_task(row: OutboxRow, now: datetime) -> dict[str, Any]:
    task: dict[str, Any] = {
        "resourceType": "Task",
        "id": resource_id("Task", f"Outbox/{row.id}", "not-filed"),
        "status": "requested",
        "intent": "order",
        "priority": "urgent",
        "code": {"coding": [{"system": OUTBOX_TASK_SYSTEM, "code": "letter-not-filed", "display": "Letter received but not filed"}]},
        "description": f"The {row.letter_type} letter sent to {row.recipient_kind} {row.address or ''} reached the practice's "
        "system but was not filed (no business acknowledgement): check with the practice that it was filed",
        "focus": {"reference": f"DocumentReference/{row.letter_id}"},
        "authoredOn": to_fhir_instant(now),
        "reasonCode": {"text": "GPCM-SD-095: the infrastructure acknowledgement came, the business acknowledgement did not"},
    }
    if row.patient_id:
        task["for"] = {"reference": f"Patient/{row.patient_id}"}
    return task


def _mark_unacknowledged(session: Session, rows: Sequence[OutboxRow], code: str, reason: str, now: datetime, *, filed: bool | None) -> None:
    """GPCM-SD-095: each overdue delivery `unacknowledged` with `reason`, its event, and a Task for the desk."""
    for row in rows:
        row.status, row.reason, row.updated_at = "unacknowledged", reason, now
        event(session, row, code, "unacknowledged", reason, now)
        found = get_for_update(session, "DocumentReference", row.letter_id)
        put_resource(session, unacknowledged_task(row, now, filed), now, found[1] if found else None)
