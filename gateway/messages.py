"""One inbound message, one transaction: write its resources, keep its raw bytes and its reply, then commit.

Shared by every inbound channel. The reply is built inside the transaction and stored
with the message, so the sender sees it only after the commit, and a re-send can get
the same reply back. Unique keys on (channel, message id) / (channel, header id) make
racing copies meet in the database: the loser rolls back and is answered as a re-send.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from gateway.store.db import write_transaction
from gateway.store.models import InboundMessage
from gateway.store.repo import find_inbound, put_resources

__all__ = ["Reply", "Inbound", "previous", "resend", "commit_message", "ATTEMPTS"]

log = structlog.get_logger("iap.messages")
ATTEMPTS = 3


@dataclass
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    duplicate: bool = False


@dataclass(frozen=True)
class Inbound:
    channel: str
    message_id: str
    raw: bytes
    header_id: str | None = None
    correlation_id: str | None = None
    rule_set: str | None = None
    unused: tuple[str, ...] = ()


# resources to write (each with the service it belongs to, for the queue index), worked out inside the transaction
Write = Callable[[Session], list[tuple[dict[str, Any], str | None]]]
# the reply, from the stored resources (in write order) and the keys ("Type/id") of those newly created
MakeReply = Callable[[list[dict[str, Any]], set[str]], Reply]


def previous(sessions: sessionmaker[Session], channel: str, message_id: str, header_id: str | None = None) -> InboundMessage | None:
    with sessions() as session:
        session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})  # one read: no BEGIN and ROLLBACK round trips
        return find_inbound(session, channel, message_id, header_id)


def resend(original: InboundMessage) -> Reply:
    """The original reply again, marked as such (HL7 'duplicate transmission' semantics)."""
    log.info("message.resent", channel=original.channel, seq=original.seq)
    return Reply(original.response_status, json.loads(original.response_body), {"X-Duplicate-Of": str(original.seq)}, duplicate=True)


def commit_message(
    sessions: sessionmaker[Session],
    inbound: Inbound,
    now: datetime,
    write: Write,
    make_reply: MakeReply,
    on_race: Callable[[InboundMessage], Reply] = resend,
) -> Reply:
    """Write, store the message and its reply, commit; retry a lost race on another key, answer a re-send as one."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with write_transaction(sessions) as session:
                results = put_resources(session, write(session), now)
                stored = [result for result, _ in results]
                created = {f"{r['resourceType']}/{r['id']}" for r, outcome in results if outcome == "created"}
                reply = make_reply(stored, created)
                session.connection().execute(  # a plain insert: no ORM object to track for one row
                    insert(InboundMessage),
                    {
                        "channel": inbound.channel,
                        "message_id": inbound.message_id,
                        "header_id": inbound.header_id,
                        "correlation_id": inbound.correlation_id,
                        "received_at": now,
                        "raw": inbound.raw,
                        "task_id": next((r["id"] for r in stored if r["resourceType"] == "Task"), None),
                        "rule_set": inbound.rule_set,
                        "unused": json.dumps(list(inbound.unused)),
                        "response_status": reply.status,
                        "response_body": json.dumps(reply.body, separators=(",", ":")),
                    },
                )
            return reply
        except (IntegrityError, OperationalError) as exc:
            # a racing copy of this message won, or a racing write on a shared resource (a Patient): look, then retry
            original = previous(sessions, inbound.channel, inbound.message_id, inbound.header_id)
            if original is not None:
                return on_race(original)
            log.warning("store.retry", channel=inbound.channel, attempt=attempt, error=type(exc).__name__)
            if attempt == ATTEMPTS:
                raise
    raise AssertionError("unreachable")
