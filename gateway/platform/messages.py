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

from adapters.problems import GatewayInputError
from gateway.platform.resends import refuse_reuse, same_json
from gateway.platform.security.principal import current_principal
from gateway.platform.store.db import group_commit, one_read, store_timed_out, write_transaction
from gateway.platform.store.deferred import defer
from gateway.platform.store.jsontext import dumps
from gateway.platform.store.keys import message_key
from gateway.platform.store.models import InboundMessage
from gateway.platform.store.repo import FirstVersion, Merge, StoredMessage, find_inbound, first_versions, put_resources

__all__ = ["Reply", "Inbound", "previous", "resend", "resend_or_refuse", "commit_message", "ATTEMPTS"]

log = structlog.get_logger("iap.messages")
ATTEMPTS = 3


@dataclass
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    duplicate: bool = False
    text: str | None = None  # `body` as stored (compact JSON), when it was: sent as is, not encoded a second time

    def encoded(self) -> bytes:
        """The body as compact UTF-8 JSON: the stored text when there is one, else encoded now."""
        return (self.text if self.text is not None else dumps(self.body)).encode("utf-8")


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
Writes = list[tuple[dict[str, Any], str | None]]
Write = Callable[[Session], Writes]
# the reply, from the stored resources (in write order) and the keys ("Type/id") of those newly created
MakeReply = Callable[[list[dict[str, Any]], set[str]], Reply]


def previous(sessions: sessionmaker[Session], channel: str, message_id: str, header_id: str | None = None) -> StoredMessage | None:
    with one_read(sessions) as connection:
        return find_inbound(connection, channel, message_id, header_id)


def resend(original: StoredMessage) -> Reply:
    """The original reply again, marked as such (HL7 'duplicate transmission' semantics)."""
    log.info("message.resent", channel=original.channel, seq=original.seq)
    body = json.loads(original.response_body)
    headers = {"X-Duplicate-Of": str(original.seq)}
    if original.response_status == 201 and body.get("type") == "batch-response" and body.get("entry"):
        # the Location the original reply had (its first entry's): a sender recovering after a crash needs it again
        headers["Location"] = "/fhir/" + body["entry"][0]["response"]["location"]
    return Reply(original.response_status, body, headers, duplicate=True, text=original.response_body)


def resend_or_refuse(original: StoredMessage, raw: bytes, element: str) -> Reply:
    """A JSON message under a stored id: the original reply when it is that message again (however re-serialised),
    else refused 422 naming `element`: a different message reusing an id is never taken for a re-send (gateway.platform.resends)."""
    if same_json(original.raw, raw):
        return resend(original)
    raise refuse_reuse(original.channel, element, original.seq)


def commit_message(
    sessions: sessionmaker[Session],
    inbound: Inbound,
    now: datetime,
    write: Write,
    make_reply: MakeReply,
    on_race: Callable[[StoredMessage], Reply] = resend,
    expected: Writes | None = None,
    merge: Merge | None = None,
) -> Reply:
    """Write, store the message and its reply, commit; retry a lost race on another key, answer a re-send as one.

    `expected`: what `write` will return when none of it is stored yet (the usual case: a new referral).
    Their first versions and the reply they make are then worked out before the transaction, and used
    if `write` returns those very objects and all of them are new: less work while the transaction
    holds its locks (on SQLite, the one writer lock of the file). `merge`: how a write combines with
    a stored version (`put_resources`).

    On a SQLite file the transaction may be shared with other messages waiting for the writer at the
    same moment, each with its own AuditEvent, and committed with them (`gateway.platform.store.group_commit`);
    the reply is returned only once that commit is done.
    """
    ahead = _ahead(expected, now, make_reply) if expected else None

    principal = current_principal()

    def transaction(session: Session) -> Reply:
        writes = write(session)
        results = put_resources(session, writes, now, ahead.first if ahead else None, merge)
        stored = [result for result, _ in results]
        if ahead is not None and ahead.matches(results):
            reply = ahead.reply
        else:
            created = {f"{r['resourceType']}/{r['id']}" for r, outcome in results if outcome == "created"}
            reply = _encoded(make_reply(stored, created))
        defer(  # a plain insert (no ORM object to track for one row), sent with the COMMIT on PostgreSQL
            session.connection(),
            _INSERT_INBOUND,
            [
                {
                    "channel": inbound.channel,
                    "message_id": message_key(inbound.message_id),
                    "header_id": message_key(inbound.header_id),
                    "correlation_id": message_key(inbound.correlation_id),
                    "received_at": now,
                    "raw": inbound.raw,
                    "task_id": next((r["id"] for r in stored if r["resourceType"] == "Task"), None),
                    "rule_set": inbound.rule_set,
                    "unused": dumps(list(inbound.unused)),
                    "response_status": reply.status,
                    "response_body": reply.text,
                    # the console's message log: who sent it, and the service it went to (gateway.platform.store.visibility)
                    "client_id": principal.client_id if principal else None,
                    "service_id": next((service for _, service in writes if service), principal.service_id if principal else None),
                }
            ],
        )
        return reply

    group = group_commit(sessions)  # SQLite: shares its commit with other messages waiting for the writer
    for attempt in range(1, ATTEMPTS + 1):
        try:
            if group is not None:
                return group.run(transaction)
            with write_transaction(sessions) as session:
                return transaction(session)
        except GatewayInputError:
            # refused while writing (e.g. CAS-08 against a case just stored): when a racing message under this one's id
            # was committed first, this is a re-send of it or reuses its id, and `on_race` answers as it would after it
            original = previous(sessions, inbound.channel, inbound.message_id, inbound.header_id)
            if original is not None:
                return on_race(original)
            raise
        except (IntegrityError, OperationalError) as exc:
            # a racing copy of this message won, or a racing write on a shared resource (a Patient): look, then retry
            original = previous(sessions, inbound.channel, inbound.message_id, inbound.header_id)
            if original is not None:
                return on_race(original)
            if attempt == ATTEMPTS or store_timed_out(exc):  # a wait that ran its time: trying again would wait as long
                raise
            log.warning("store.retry", channel=inbound.channel, attempt=attempt, error=type(exc).__name__)
    raise AssertionError("unreachable")


_INSERT_INBOUND = insert(InboundMessage)


@dataclass(frozen=True)
class _Ahead:
    """First versions and the reply of writes that are all new, made before the transaction."""

    first: dict[tuple[str, str], FirstVersion]
    stored: list[dict[str, Any]]
    reply: Reply

    def matches(self, results: list[tuple[dict[str, Any], str]]) -> bool:
        """The transaction stored exactly these first versions (so the reply made from them is its reply)."""
        return len(results) == len(self.stored) and all(
            outcome == "created" and got is made for (got, outcome), made in zip(results, self.stored, strict=True)
        )


def _ahead(expected: Writes, now: datetime, make_reply: MakeReply) -> _Ahead | None:
    first = first_versions(expected, now)
    if len(first) != len(expected):  # a resource written twice: worked out in the transaction
        return None
    stored = [first[(r["resourceType"], r["id"])].full for r, _ in expected]
    reply = _encoded(make_reply(stored, {f"{r['resourceType']}/{r['id']}" for r in stored}))
    return _Ahead(first, stored, reply)


def _encoded(reply: Reply) -> Reply:
    """`reply` with its body's text, as it is stored and sent (encoded once)."""
    reply.text = dumps(reply.body)
    return reply
