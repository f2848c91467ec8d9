"""The delivery worker: claim due deliveries, check consent, route, render, send, record; poll acknowledgements.

Runs inside `serve` (every IAP_DELIVER_SECONDS) and as `iap-gateway deliver`. Every attempt is
recorded before anything is sent and its outcome after; retries follow tenacity's exponential
backoff with jitter up to a bounded number of attempts, then the delivery is dead-lettered with
its reason (visible at `GET /outbox?status=dead`, re-sent by `iap-gateway outbox replay ID`).
A delivery whose worker died mid-send is claimed again "in doubt": the transport is asked whether
the letter already went (MESH tracking by local id = letter id) before anything is re-sent.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from tenacity import RetryCallState, stop_after_attempt, wait_exponential_jitter

from fhir_mapping import codes
from fhir_mapping.datetimes import to_fhir_instant
from fhir_mapping.ids import resource_id
from fhir_mapping.letters.document import letter_version, nhs_number, patient_name
from fhir_mapping.letters.itk3 import ItkContext, message_header_id, parse_itk_response, render_itk3
from fhir_mapping.letters.types import LetterType, letter_types
from gateway.audit import record_delivery
from gateway.cases import provenance
from gateway.clock import Clock
from gateway.failpoints import failpoint
from gateway.outbox import store
from gateway.outbox.consent import withheld_because
from gateway.outbox.epr import RECIPIENT_KIND as EPR
from gateway.outbox.epr import note_outgoing
from gateway.outbox.letters import letter_document
from gateway.outbox.mllp_out import MllpTransport
from gateway.outbox.routing import NoRoute, Route, Routing, load_routing, resolve
from gateway.outbox.transports import (
    FhirPushTransport,
    MeshSettings,
    MeshTransport,
    Outgoing,
    PermanentError,
    PrintTransport,
    Sent,
    TransientError,
    Transport,
    mesh_client,
)
from gateway.rules.sender_schema import SenderRegistry, load_senders
from gateway.settings import Settings
from gateway.store.jsontext import dumps
from gateway.store.models import OutboxRow
from gateway.store.repo import get_for_update, get_resource, put_resource

__all__ = ["RetryPolicy", "Deliverer", "deliverer_from_settings", "run_deliverer", "unacknowledged_task", "OUTBOX_TASK_SYSTEM"]

OUTBOX_TASK_SYSTEM = f"{codes.GATEWAY_BASE}/CodeSystem/outbox-task"  # work the outbox raises for a person

log = structlog.get_logger("iap.outbox")
DONE = ("delivered", "withheld", "superseded")


class RetryPolicy:
    """tenacity's exponential backoff with jitter and attempt limit, applied to a durable attempt count."""

    def __init__(self, max_attempts: int, initial_seconds: float, max_seconds: float) -> None:
        self.max_attempts = max_attempts
        self.wait = wait_exponential_jitter(multiplier=initial_seconds, max=max_seconds, jitter=initial_seconds / 2)
        self.stop = stop_after_attempt(max_attempts)

    def next_delay(self, attempt: int) -> timedelta | None:
        """How long before the next attempt after failed attempt number `attempt`; None when attempts are exhausted."""
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = attempt
        if self.stop(state):
            return None
        return timedelta(seconds=math.ceil(self.wait(state)))  # whole seconds: the time shown is the time it will run


@dataclass
class Deliverer:
    sessions: sessionmaker[Session]
    clock: Clock
    routing: Routing
    policy: RetryPolicy
    transports: dict[str, Transport]
    mesh: MeshSettings | None = None
    print_dir: Any = None
    lease: timedelta = timedelta(minutes=5)
    retention: timedelta = timedelta(days=90)
    ack_due: timedelta = timedelta(hours=48)  # GPCM-SD-095: no acknowledgement after this long -> a person follows it up
    worker: str = field(default_factory=lambda: f"{socket.gethostname()[:40]}:{uuid.uuid4().hex[:8]}")
    senders: SenderRegistry = field(default_factory=lambda: SenderRegistry([]))
    _skipped: set[str] = field(default_factory=set)
    _down: set[str] = field(default_factory=set)  # EPR destinations that failed an attempt in this pass

    def close(self) -> None:
        for transport in self.transports.values():
            client = getattr(transport, "client", None)
            if isinstance(client, httpx.Client):
                client.close()

    # --- one pass ---------------------------------------------------------------------------------

    def run_pass(self) -> dict[str, int]:
        """Deliver what is due, poll acknowledgements, apply retention; counts of each."""
        outcomes = self.deliver_once()
        acks = self.poll_acks()
        overdue = self.raise_unacknowledged()
        with self.sessions.begin() as session:
            purged = store.purge(session, self.clock.now() - self.retention)
        counts = {status: sum(1 for _, s in outcomes if s == status) for status in store.STATUSES}
        return {k: v for k, v in counts.items() if v} | {"acknowledgements": acks, "unacknowledged": overdue, "purged": purged}

    def deliver_once(self, only: str | None = None, limit: int = 20) -> list[tuple[str, str]]:
        """Claim due deliveries and attempt each once: [(delivery id, status after)]."""
        out = []
        self._down = set()
        for claim in store.claim(self.sessions, self.worker, self.clock.now(), self.lease, limit, only):
            try:
                status = self._deliver(claim)
            except Exception as exc:  # noqa: BLE001 - a bug on one letter must not stop the others; it is recorded and retried
                log.error("outbox.crashed", delivery=claim.id, error=type(exc).__name__)
                status = self._failed_attempt(claim, TransientError(f"internal error: {type(exc).__name__}"), None)
            out.append((claim.id, status))
        return out

    # --- one delivery -----------------------------------------------------------------------------

    def _deliver(self, claim: store.Claim) -> str:
        if claim.recipient_kind == EPR:
            return self._deliver_note(claim)
        letter_type = letter_types()[claim.letter_type]
        with self.sessions() as session:
            reason = withheld_because(session, letter_type, claim.recipient_kind, claim.patient_id)
            if reason is None:
                letter, document, pdf = letter_document(session, claim.letter_id)
                patient = get_resource(session, "Patient", claim.patient_id or "") or {}
        if reason is not None:
            return self._withhold(claim, letter_type, reason)
        route = resolve(self.routing, claim.recipient_kind, claim.recipient, patient, self.print_dir)
        if isinstance(route, NoRoute):
            return self._dead(claim, route.reason, None, None)
        transport = self.transports.get(route.transport)
        if transport is None:
            return self._dead(claim, f"the {route.transport} transport is not configured (see docs/letters.md)", route, None)
        outgoing = self._outgoing(claim, letter_type, route, document, pdf, patient)
        failpoint("outbox.before-send")
        if claim.in_doubt:
            already = transport.find_sent(outgoing)
            if already is not None:
                return self._sent(
                    claim, route, outgoing, Sent(already, route.transport != "mesh", "found already sent after an interrupted attempt")
                )
        try:
            result = transport.send(outgoing)
        except PermanentError as exc:
            return self._dead(claim, str(exc), route, exc.outcome)
        except TransientError as exc:
            return self._failed_attempt(claim, exc, route)
        failpoint("outbox.after-send")
        return self._sent(claim, route, outgoing, result)

    def _deliver_note(self, claim: store.Claim) -> str:
        """CAS-13: a consultation note to an EPR over MLLP (gateway.outbox.epr); a destination that failed in this pass
        is not tried again in it, so one that is down costs each pass at most one timeout (letters go on meanwhile)."""
        profile = self.senders.profiles.get(claim.recipient)
        if profile is None or profile.destination is None:
            return self._dead(claim, f"no MLLP destination in sender profile {claim.recipient!r} (gateway/rules/senders)", None, None)
        route = Route("mllp", f"{profile.destination.host}:{profile.destination.port}")
        if claim.recipient in self._down:
            return self._postpone(claim, route, f"{route.address} failed earlier in this pass")
        transport = self.transports.get("mllp")
        if transport is None:
            return self._dead(claim, "the mllp transport is not configured", route, None)
        with self.sessions() as session:
            outgoing = note_outgoing(session, claim.id, claim.letter_id, claim.patient_id or "", profile, self.clock.now())
        failpoint("outbox.before-send")
        try:
            result = transport.send(outgoing)  # in doubt or not: MLLP cannot be asked; the same MSH-10 lets the receiver drop a copy
        except PermanentError as exc:
            return self._dead(claim, str(exc), route, None)
        except TransientError as exc:
            self._down.add(claim.recipient)
            return self._failed_attempt(claim, exc, route)
        failpoint("outbox.after-send")
        return self._sent(claim, route, outgoing, result)

    def _postpone(self, claim: store.Claim, route: Route, why: str) -> str:
        """Back to pending without spending an attempt: not tried, so not a failure of this delivery."""
        now = self.clock.now()
        later = now + (self.policy.next_delay(1) or timedelta(0))
        with self.sessions.begin() as session:
            row = self._row(session, claim.id)
            row.status, row.attempts, row.next_attempt_at, row.lease_until, row.updated_at = "pending", claim.attempt - 1, later, None, now
            row.transport, row.address = route.transport, route.address
            # not an attempt: an outbox event only (no AuditEvent, no delivery counted)
            store.event(session, row.id, "postponed", "pending", f"{why}; next attempt at {to_fhir_instant(later)}", now)
        return "pending"

    def _outgoing(
        self, claim: store.Claim, letter_type: LetterType, route: Route, document: dict[str, Any], pdf: bytes, patient: dict[str, Any]
    ) -> Outgoing:
        if route.transport == "print":
            return Outgoing(
                claim.id, claim.letter_id, route.address, pdf, "application/pdf", filename=f"{claim.letter_id}-{claim.id[:8]}.pdf"
            )
        if route.transport == "fhir":
            body = dumps(document).encode("utf-8")
            return Outgoing(claim.id, claim.letter_id, route.address, body, "application/fhir+json")
        context = ItkContext(
            delivery_id=claim.id,
            form=letter_type.itk,
            local_extension=letter_type.local_extension,
            sender_mailbox=self.mesh.mailbox if self.mesh else "",
            sender_ods=self.routing.sender.ods,
            gp_ods=claim.recipient if claim.recipient_kind == "gp" and claim.recipient != "V81999" else None,
        )
        sender = document["entry"][0]["resource"]
        custodian: dict[str, Any] = next(
            (e["resource"] for e in document["entry"] if f"urn:uuid:{e['resource']['id']}" == sender["custodian"]["reference"]), {}
        )
        ods = next((i["value"] for i in custodian.get("identifier", [])), self.routing.sender.ods)
        subject = (
            f"{sender.get('title') or letter_type.title} for {patient_name(patient)}, NHS Number {nhs_number(patient)}, "
            f"seen at {custodian.get('name') or self.routing.sender.name}, ODS Code {ods}, Version {letter_version(document)}"
        )  # GPCM-SD-CS-065/068 with the version (GPCM-SD-CS-006; the GPCM-SD-091/092)
        return Outgoing(
            claim.id,
            claim.letter_id,
            route.address,
            render_itk3(document, pdf, context),
            "application/fhir+xml",
            workflow_id=letter_type.workflow,
            subject=subject[:500],
            filename=f"{claim.letter_id}.xml",
        )

    # --- recording outcomes -----------------------------------------------------------------------

    def _row(self, session: Session, delivery: str) -> OutboxRow:
        return session.execute(select(OutboxRow).where(OutboxRow.id == delivery).with_for_update()).scalar_one()

    def _sent(self, claim: store.Claim, route: Route, outgoing: Outgoing, result: Sent) -> str:
        now = self.clock.now()
        with self.sessions.begin() as session:
            row = self._row(session, claim.id)
            row.status = "delivered" if result.delivered else "sent"
            row.transport, row.address, row.workflow_id = route.transport, route.address, outgoing.workflow_id
            row.message_id, row.lease_until, row.reason, row.updated_at = result.message_id[:64], None, None, now
            row.itk_message_id = message_header_id(claim.id) if route.transport == "mesh" else None
            _event(session, row, "attempt", row.status, result.detail or result.message_id, now)
            if row.status == "delivered":
                _settle(session, claim.letter_id, now)
        log.info("outbox.sent", delivery=claim.id, transport=route.transport, status=row.status, attempt=claim.attempt)
        return row.status

    def _failed_attempt(self, claim: store.Claim, error: Exception, route: Route | None) -> str:
        delay = self.policy.next_delay(claim.attempt)
        if delay is None:
            return self._dead(claim, f"gave up after {claim.attempt} attempts: {error}", route, None)
        now = self.clock.now()
        with self.sessions.begin() as session:
            row = self._row(session, claim.id)
            row.status, row.next_attempt_at, row.lease_until, row.reason, row.updated_at = "pending", now + delay, None, str(error), now
            if route is not None:
                row.transport, row.address = route.transport, route.address
            _event(session, row, "attempt", "retry", f"{error}; next attempt at {to_fhir_instant(now + delay)}", now)
        log.info("outbox.retry", delivery=claim.id, attempt=claim.attempt, delay_seconds=int(delay.total_seconds()))
        return "pending"

    def _dead(self, claim: store.Claim, reason: str, route: Route | None, outcome: dict[str, Any] | None) -> str:
        now = self.clock.now()
        with self.sessions.begin() as session:
            row = self._row(session, claim.id)
            row.status, row.reason, row.lease_until, row.updated_at = "dead", reason, None, now
            row.outcome = json.dumps(outcome) if outcome else None
            if route is not None:
                row.transport, row.address = route.transport, route.address
            _event(session, row, "attempt", "dead", reason, now)
        log.warning("outbox.dead", delivery=claim.id, attempts=claim.attempt)
        return "dead"

    def _withhold(self, claim: store.Claim, letter_type: LetterType, reason: str) -> str:
        """TT-14/TT-15: not sent, and the decision recorded (outbox status and a Provenance on the letter)."""
        now = self.clock.now()
        with self.sessions.begin() as session:
            row = self._row(session, claim.id)
            row.status, row.reason, row.lease_until, row.updated_at = "withheld", reason, None, now
            _event(session, row, "consent", "withheld", reason, now)
            letter = get_resource(session, "DocumentReference", claim.letter_id)
            if letter is not None:
                rules = ("TT-14", "TT-15") if claim.recipient_kind == "patient" else ("TT-14",)
                record = provenance(letter, f"letter-withheld-{claim.recipient_kind}", "iap-gateway delivery worker", rules, reason, now)
                put_resource(session, record, now)
            _settle(session, claim.letter_id, now)
        log.info("outbox.withheld", delivery=claim.id, letter_type=letter_type.code)
        return "withheld"

    # --- acknowledgements ------------------------------------------------------------------------

    def poll_acks(self) -> int:
        """MESH tracking of what we sent, then our inbox: MESH reports and ITK3 acknowledgements, recorded against each letter."""
        if self.mesh is None:
            return 0
        recorded = 0
        with self.sessions() as session:
            sent = list(
                session.execute(
                    select(OutboxRow.id, OutboxRow.message_id)
                    .where(OutboxRow.status.in_(("sent", "unacknowledged")), OutboxRow.transport == "mesh")
                    .limit(500)
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
        a Task for the sending service's desk. Each delivery is raised once."""
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
            for row in rows:
                hours = f"{self.ack_due.total_seconds() / 3600:g}"
                reason = f"no acknowledgement {hours} hours after sending (GPCM-SD-095): check with the recipient"
                row.status, row.reason, row.updated_at = "unacknowledged", reason, now
                _event(session, row, "ack-overdue", "unacknowledged", reason, now)
                found = get_for_update(session, "DocumentReference", row.letter_id)
                put_resource(session, unacknowledged_task(row, now), now, found[1] if found else None)
        for row in rows:
            log.warning("outbox.unacknowledged", delivery=row.id, transport=row.transport)
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
            _event(session, row, kind, outcome, detail, now)
            if outcome == "failed" and row.status in ("sent", "unacknowledged", "delivered"):
                row.status, row.reason, row.updated_at = "failed", detail, now
            elif outcome == "delivered" and row.status in ("sent", "unacknowledged"):  # a late acknowledgement still counts
                row.status, row.updated_at = "delivered", now
                _settle(session, row.letter_id, now)
        log.info("outbox.ack", delivery=delivery, kind=kind, outcome=outcome)
        return 1


def _event(session: Session, row: OutboxRow, kind: str, outcome: str, detail: str, now: datetime) -> None:
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


def unacknowledged_task(row: OutboxRow, now: datetime) -> dict[str, Any]:
    """The service desk's work item for a letter nobody acknowledged (GPCM-SD-095): one per delivery."""
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


def _settle(session: Session, letter_id: str, now: datetime) -> None:
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


def deliverer_from_settings(
    sessions: sessionmaker[Session], clock: Clock, settings: Settings, http: httpx.Client | None = None
) -> Deliverer:
    """The worker as configured: routing file checked, transports for what is configured (MESH, FHIR push, print)."""
    routing = load_routing(settings.routing_file)
    senders = load_senders(settings.senders_dir)
    transports: dict[str, Transport] = {
        "fhir": FhirPushTransport(http or httpx.Client(timeout=settings.fhir_push_timeout_seconds)),
        "print": PrintTransport(),
        "mllp": MllpTransport(senders),
    }
    mesh = None
    if settings.mesh_url:
        missing = [name for name in ("mesh_mailbox", "mesh_password", "mesh_shared_key") if not getattr(settings, name)]
        if missing:
            raise ValueError(f"IAP_MESH_URL is set but {', '.join('IAP_' + m.upper() for m in missing)} is not")
        cert = (str(settings.mesh_cert), str(settings.mesh_key)) if settings.mesh_cert and settings.mesh_key else None
        mesh = MeshSettings(
            url=settings.mesh_url,
            mailbox=str(settings.mesh_mailbox),
            password=str(settings.mesh_password),
            shared_key=str(settings.mesh_shared_key),
            cert=cert,
            ca=str(settings.mesh_ca) if settings.mesh_ca else None,
            timeout=settings.mesh_timeout_seconds,
        )
        transports["mesh"] = MeshTransport(mesh)
    return Deliverer(
        sessions=sessions,
        clock=clock,
        routing=routing,
        policy=RetryPolicy(settings.outbox_max_attempts, settings.outbox_backoff_seconds, settings.outbox_backoff_max_seconds),
        transports=transports,
        mesh=mesh,
        print_dir=settings.print_dir,
        lease=timedelta(seconds=settings.outbox_lease_seconds),
        retention=timedelta(days=settings.outbox_retention_days),
        ack_due=timedelta(hours=settings.outbox_ack_due_hours),
        senders=senders,
    )


async def run_deliverer(deliverer: Deliverer, every: timedelta) -> None:
    """The background worker started with `serve`: a pass, sleep, repeat (errors logged, never fatal)."""
    while True:
        try:
            await asyncio.to_thread(deliverer.run_pass)
        except Exception as exc:  # noqa: BLE001 - the worker must outlive a bad pass; the next one retries
            log.error("outbox.pass_failed", error=type(exc).__name__)
        await asyncio.sleep(every.total_seconds())
