"""The dashboard's numbers: inbound messages per channel in a window, and deliveries per outbound destination.

Reads only, through the request's read session: a session bound to a service (gateway.platform.store.visibility) counts only
the messages and deliveries of that service, with no code here to say so.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import case, func, literal_column, select
from sqlalchemy.orm import Session

from gateway.platform.store.models import InboundMessage, OutboxRow, QuarantinedMessage, ResentMessage

__all__ = ["CHANNELS", "DESTINATIONS", "ChannelCounts", "DestinationCounts", "channel_counts", "outbound_counts", "BUSY_NOT_STORED"]

# every inbound channel (inbound_messages.channel) and the transports it comes by, in the dashboard's order
CHANNELS: tuple[tuple[str, str], ...] = (
    ("nhs111-case", "http"),
    ("bars", "http"),
    ("mhpl", "http"),
    ("hl7v2", "http"),
    ("hl7v2", "mllp"),
    ("cleo", "http"),
    ("pcmis", "http"),
    ("systmone", "http"),
    ("questionnaire-response", "http"),
    ("pathway-referral", "http"),
)
DESTINATIONS = ("mesh", "fhir", "print", "mllp", "email")  # outbox.transport values (gateway.letters.outbox.worker's transports)
UNROUTED = "unrouted"  # a delivery not yet given a route (pending its first attempt, or withheld before routing)
BUSY_NOT_STORED = (
    "messages turned away busy (503, IAP_INGEST_QUEUE_SECONDS; MLLP connections closed unread) are not stored: they are "
    'counted in iap_messages_total{outcome="unavailable"} (with store outages) and iap_mllp_refused_connections_total'
    '{reason="busy"}, and logged as request.busy / mllp.busy (gateway.platform.metrics)'
)


@dataclass(frozen=True)
class ChannelCounts:
    """One inbound channel (and transport) in a window. `busy` is None: turned-away messages are metrics only
    (`BUSY_NOT_STORED`)."""

    channel: str
    transport: str  # http | mllp
    accepted: int = 0
    refused: int = 0
    refused_by_reason: dict[str, int] = field(default_factory=dict)  # FHIR issue code, or HL7 "AE 205"
    duplicates: int = 0
    busy: int | None = None


@dataclass(frozen=True)
class DestinationCounts:
    """Deliveries to one outbound destination by state (docs/letters.md): pending = pending or being sent;
    acknowledged = delivered (the receiver acknowledged it); unacknowledged = sent, no acknowledgement in time."""

    destination: str  # mesh | fhir | print | mllp | email | unrouted
    pending: int = 0
    sent: int = 0
    acknowledged: int = 0
    unacknowledged: int = 0
    dead: int = 0
    failed: int = 0
    withheld: int = 0


# inbound_messages has no transport: a message an MLLP peer sent is stored with client `mllp:<address>`. Literals, not
# bound parameters: PostgreSQL groups by the expression only when the select's and the GROUP BY's are the same text.
_TRANSPORT = case((InboundMessage.client_id.like(literal_column("'mllp:%'")), literal_column("'mllp'")), else_=literal_column("'http'"))


def channel_counts(session: Session, since: datetime, until: datetime) -> list[ChannelCounts]:
    """Per inbound channel, messages received in [since, until): accepted (stored), refused (the quarantine log, by
    reason), duplicates (re-sends answered from the store). Every channel is listed, with zeros when quiet."""
    accepted: Counter[tuple[str, str]] = Counter()
    transport = _TRANSPORT
    stmt = (
        select(InboundMessage.channel, transport, func.count())
        .where(InboundMessage.received_at >= since, InboundMessage.received_at < until)
        .group_by(InboundMessage.channel, transport)
    )
    for channel, how, n in session.execute(stmt):
        accepted[(channel, how)] += n
    refused: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    stmt_q = (
        select(QuarantinedMessage.channel, QuarantinedMessage.transport, QuarantinedMessage.reason, func.count())
        .where(QuarantinedMessage.received_at >= since, QuarantinedMessage.received_at < until)
        .group_by(QuarantinedMessage.channel, QuarantinedMessage.transport, QuarantinedMessage.reason)
    )
    for channel, how, reason, n in session.execute(stmt_q):
        refused[(channel, how)][reason] += n
    resent: Counter[tuple[str, str]] = Counter()
    stmt_r = (
        select(ResentMessage.channel, ResentMessage.transport, func.count())
        .where(ResentMessage.received_at >= since, ResentMessage.received_at < until)
        .group_by(ResentMessage.channel, ResentMessage.transport)
    )
    for channel, how, n in session.execute(stmt_r):
        resent[(channel, how)] += n
    keys = list(CHANNELS) + sorted({*accepted, *refused, *resent} - set(CHANNELS))
    return [
        ChannelCounts(
            channel=channel,
            transport=how,
            accepted=accepted[(channel, how)],
            refused=sum(refused[(channel, how)].values()),
            refused_by_reason=dict(sorted(refused[(channel, how)].items())),
            duplicates=resent[(channel, how)],
        )
        for channel, how in keys
    ]


_STATE = {
    "pending": "pending",
    "sending": "pending",
    "sent": "sent",
    "delivered": "acknowledged",
    "unacknowledged": "unacknowledged",
    "dead": "dead",
    "failed": "failed",
    "withheld": "withheld",
}  # superseded deliveries (replaced before they went) are not shown


def outbound_counts(session: Session) -> list[DestinationCounts]:
    """Per outbound destination (the route of a delivery's last attempt), deliveries by state, now."""
    found: dict[str, Counter[str]] = defaultdict(Counter)
    stmt = select(OutboxRow.transport, OutboxRow.status, func.count()).group_by(OutboxRow.transport, OutboxRow.status)
    for transport, status, n in session.execute(stmt):
        state = _STATE.get(status)
        if state is not None:
            found[transport or UNROUTED][state] += n
    names = list(DESTINATIONS) + sorted(set(found) - set(DESTINATIONS) - {UNROUTED}) + ([UNROUTED] if UNROUTED in found else [])
    return [DestinationCounts(name, **found[name]) for name in names]
