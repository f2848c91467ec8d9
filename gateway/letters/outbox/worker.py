"""The delivery worker: claim due deliveries, check consent, route, render, send, record; poll acknowledgements
(`acks.py`, which `Deliverer` takes in). Outcomes are recorded through `record.py`.

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
from datetime import timedelta
from typing import Any

import httpx
import structlog
from sqlalchemy.orm import Session, sessionmaker
from tenacity import RetryCallState, stop_after_attempt, wait_exponential_jitter

from common.datetimes import to_fhir_instant
from fhir_mapping.letters.document import letter_version, nhs_number, patient_name
from fhir_mapping.letters.itk3 import ItkContext, message_header_id, render_itk3
from fhir_mapping.letters.types import LetterType, letter_types
from gateway.cas.cases import provenance
from gateway.epr.rules.sender_schema import SenderRegistry, load_senders
from gateway.letters.outbox import store
from gateway.letters.outbox.acks import OUTBOX_TASK_SYSTEM, Acknowledgements, unacknowledged_task
from gateway.letters.outbox.consent import withheld_because
from gateway.letters.outbox.epr import RECIPIENT_KIND as EPR
from gateway.letters.outbox.epr import note_outgoing
from gateway.letters.outbox.letters import letter_document
from gateway.letters.outbox.mllp_out import MllpTransport
from gateway.letters.outbox.record import event, settle
from gateway.letters.outbox.routing import NoRoute, Route, Routing, load_routing, resolve
from gateway.letters.outbox.smtp_out import EMAIL_ROUTE, SmtpSettings, SmtpTransport, email_address_for
from gateway.letters.outbox.transports import (
    FhirPushTransport,
    MeshSettings,
    MeshTransport,
    Outgoing,
    PermanentError,
    PrintTransport,
    Sent,
    TransientError,
    Transport,
)
from gateway.platform.clock import Clock
from gateway.platform.failpoints import failpoint
from gateway.platform.settings import Settings
from gateway.platform.store.jsontext import dumps
from gateway.platform.store.repo import get_resource, put_resource

__all__ = ["RetryPolicy", "Deliverer", "deliverer_from_settings", "run_deliverer", "unacknowledged_task", "OUTBOX_TASK_SYSTEM"]

log = structlog.get_logger("iap.outbox")


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
class Deliverer(Acknowledgements):
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
                email, by_post = (None, None)
                if claim.recipient_kind == "patient":  # TT-15: by email where the request asked and it may, else by post
                    email, by_post = email_address_for(session, letter, claim.patient_id or "", patient, "email" in self.transports)
        if reason is not None:
            return self._withhold(claim, letter_type, reason)
        if by_post:
            self._note(claim, "post", by_post)
        route = (
            Route("email", EMAIL_ROUTE) if email else resolve(self.routing, claim.recipient_kind, claim.recipient, patient, self.print_dir)
        )
        if isinstance(route, NoRoute):
            return self._dead(claim, route.reason, None, None)
        transport = self.transports.get(route.transport)
        if transport is None:
            return self._dead(claim, f"the {route.transport} transport is not configured (see docs/letters.md)", route, None)
        outgoing = self._outgoing(claim, letter_type, route, document, pdf, patient, email)
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
        """CAS-13: a consultation note to an EPR over MLLP (gateway.letters.outbox.epr); a destination that failed in this pass
        is not tried again in it, so one that is down costs each pass at most one timeout (letters go on meanwhile)."""
        profile = self.senders.profiles.get(claim.recipient)
        if profile is None or profile.destination is None:
            return self._dead(claim, f"no MLLP destination in sender profile {claim.recipient!r} (gateway/epr/rules/senders)", None, None)
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

    def _note(self, claim: store.Claim, outcome: str, why: str) -> None:
        """A decision about how it goes (e.g. by post, not email), in the delivery's events: not an attempt."""
        with self.sessions.begin() as session:
            store.event(session, claim.id, "channel", outcome, why, self.clock.now())

    def _outgoing(
        self,
        claim: store.Claim,
        letter_type: LetterType,
        route: Route,
        document: dict[str, Any],
        pdf: bytes,
        patient: dict[str, Any],
        email: str | None = None,
    ) -> Outgoing:
        if route.transport == "email" and email:
            service: dict[str, Any] = next(
                (e["resource"] for e in document["entry"] if e["resource"]["resourceType"] == "Organization"), {}
            )
            subject = f"A letter from {service.get('name') or self.routing.sender.name}"  # no clinical detail outside the PDF
            return Outgoing(claim.id, claim.letter_id, email, pdf, "application/pdf", subject=subject, filename="letter.pdf")
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

    def _sent(self, claim: store.Claim, route: Route, outgoing: Outgoing, result: Sent) -> str:
        now = self.clock.now()
        with self.sessions.begin() as session:
            row = self._row(session, claim.id)
            row.status = "delivered" if result.delivered else "sent"
            row.transport, row.address, row.workflow_id = route.transport, route.address, outgoing.workflow_id
            row.message_id, row.lease_until, row.reason, row.updated_at = result.message_id[:64], None, None, now
            row.itk_message_id = message_header_id(claim.id) if route.transport == "mesh" else None
            event(session, row, "attempt", row.status, result.detail or result.message_id, now)
            if row.status == "delivered":
                settle(session, claim.letter_id, now)
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
            event(session, row, "attempt", "retry", f"{error}; next attempt at {to_fhir_instant(now + delay)}", now)
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
            event(session, row, "attempt", "dead", reason, now)
        log.warning("outbox.dead", delivery=claim.id, attempts=claim.attempt)
        return "dead"

    def _withhold(self, claim: store.Claim, letter_type: LetterType, reason: str) -> str:
        """TT-14/TT-15: not sent, and the decision recorded (outbox status and a Provenance on the letter)."""
        now = self.clock.now()
        with self.sessions.begin() as session:
            row = self._row(session, claim.id)
            row.status, row.reason, row.lease_until, row.updated_at = "withheld", reason, None, now
            event(session, row, "consent", "withheld", reason, now)
            letter = get_resource(session, "DocumentReference", claim.letter_id)
            if letter is not None:
                rules = ("TT-14", "TT-15") if claim.recipient_kind == "patient" else ("TT-14",)
                record = provenance(letter, f"letter-withheld-{claim.recipient_kind}", "iap-gateway delivery worker", rules, reason, now)
                put_resource(session, record, now)
            settle(session, claim.letter_id, now)
        log.info("outbox.withheld", delivery=claim.id, letter_type=letter_type.code)
        return "withheld"


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
    if settings.smtp_host:  # TT-15: no host, no email (client letters go by post, the reason recorded)
        if not settings.smtp_from:
            raise ValueError("IAP_SMTP_HOST is set but IAP_SMTP_FROM is not")
        if bool(settings.smtp_username) != bool(settings.smtp_password):
            raise ValueError("IAP_SMTP_USERNAME and IAP_SMTP_PASSWORD go together")
        transports["email"] = SmtpTransport(
            SmtpSettings(
                host=settings.smtp_host,
                port=settings.smtp_port,
                sender=settings.smtp_from,
                security=settings.smtp_security,
                username=settings.smtp_username,
                password=settings.smtp_password,
                ca=str(settings.smtp_ca) if settings.smtp_ca else None,
                timeout=settings.smtp_timeout_seconds,
            )
        )
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
