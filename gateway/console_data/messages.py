"""The message log: every inbound message, accepted (inbound_messages), refused (the quarantine log) or re-sent,
newest first, with what each created or changed; and one message in detail, its raw body only when allowed.

Keys: `in-<seq>` (stored), `q-<seq>` (quarantined), `re-<seq>` (a re-send record). The resources a stored message
created or changed are not linked by a column (only `task_id` for a CAS referral): they are read from the reply
stored with it, which names them (a batch row's and an HL7 message's `resources`, a FHIR batch-response's
`location`s, a BaRS reply's entries, a pathway referral's `valueReference`s, a CLEO reply's `case_ref`), and kept
only when the store holds them and the session may see them. A refused message created nothing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session, sessionmaker

from gateway.platform.audit import EVENT_REST, add_event, audit_event
from gateway.platform.security.principal import current_principal
from gateway.platform.store.db import write_transaction
from gateway.platform.store.models import ApiClient, InboundMessage, QuarantinedMessage, ResentMessage, ResourceRow

__all__ = ["OUTCOMES", "LogEntry", "MessagePage", "MessageDetail", "message_log", "message_detail", "PAGE_SIZE"]

OUTCOMES = ("accepted", "refused", "duplicate")
PAGE_SIZE = 50
_REFERENCE = re.compile(r"^([A-Z][A-Za-z]{1,63})/([A-Za-z0-9.\-]{1,64})(?:/_history/\d+)?$")
_SOURCES: tuple[tuple[str, Any], ...] = (("accepted", InboundMessage), ("refused", QuarantinedMessage), ("duplicate", ResentMessage))
_BY_PREFIX: dict[str, Any] = {"in": InboundMessage, "q": QuarantinedMessage, "re": ResentMessage}
_NOT_STORED = frozenset({"Bundle", "MessageHeader", "OperationOutcome", "Parameters"})


@dataclass(frozen=True)
class LogEntry:
    key: str  # in-<seq> | q-<seq> | re-<seq>: message_detail's key
    channel: str
    transport: str  # http | mllp
    received_at: datetime
    client_id: str | None
    client_name: str | None  # None when the session may not read clients (a bound session) or the client is gone
    message_id: str | None  # as stored: a long id is its sha256: digest (gateway.platform.store.keys)
    outcome: str  # accepted | refused | duplicate
    reply_status: int | None  # HTTP status of the reply (None over MLLP)
    ack_code: str | None  # HL7 v2 MSA-1
    reason: str | None  # a refusal's: the first error's issue code, or "AE 205"
    resources: tuple[str, ...]  # "Type/id" it created or changed (accepted only)
    duplicate_of: str | None = None  # a re-send: the key of the message it repeated, when known


@dataclass(frozen=True)
class MessagePage:
    entries: tuple[LogEntry, ...]
    page: int
    page_size: int
    has_next: bool


@dataclass(frozen=True)
class MessageDetail:
    entry: LogEntry
    problems: tuple[dict[str, Any], ...]  # a refusal's OperationOutcome issues (HL7: MSA-3 and ERR)
    reply: str | None  # the stored reply (accepted: as sent; refused: not kept beyond its problems)
    unused: tuple[str, ...]  # what an accepted message carried that the gateway did not use
    rule_set: str | None
    raw_size: int | None  # bytes received; None when the body was not all received
    raw: bytes | None  # only when the caller may see it (`raw_allowed`); each such view is audited


def message_log(
    session: Session,
    channel: str | None = None,
    outcome: str | None = None,
    since: datetime | None = None,
    page: int = 1,
    *,
    until: datetime | None = None,
    page_size: int = PAGE_SIZE,
) -> MessagePage:
    """One page of messages received in [since, until), newest first; `channel` (inbound_messages' channel names) and
    `outcome` (accepted | refused | duplicate) narrow it. ValueError for an unknown outcome or a page below 1."""
    if outcome is not None and outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {OUTCOMES}")
    if page < 1 or page_size < 1:
        raise ValueError("page and page_size start at 1")
    wanted = page * page_size + 1  # enough of each source to fill this page and know whether another follows
    rows: list[tuple[datetime, int, str, Any]] = []
    for kind, model in _SOURCES:
        if outcome not in (None, kind):
            continue
        stmt = select(model)
        if channel is not None:
            stmt = stmt.where(model.channel == channel)
        if since is not None:
            stmt = stmt.where(model.received_at >= since)
        if until is not None:
            stmt = stmt.where(model.received_at < until)
        stmt = stmt.order_by(model.received_at.desc(), model.seq.desc()).limit(wanted)
        rows += [(row.received_at, row.seq, kind, row) for row in session.execute(stmt).scalars()]
    rows.sort(key=lambda r: (r[0], r[1]), reverse=True)
    chosen = rows[(page - 1) * page_size : page * page_size]
    entries = _entries(session, [row for *_, row in chosen])
    return MessagePage(tuple(entries), page, page_size, len(rows) > page * page_size)


def message_detail(
    session: Session,
    key: str,
    *,
    raw_allowed: bool,
    sessions: sessionmaker[Session] | None = None,
    now: datetime | None = None,
) -> MessageDetail | None:
    """One message by its log key, or None (unknown, purged, or another service's). With `raw_allowed` (the router
    decides it from the caller's scope) the raw body is included, and the view is audited first: an AuditEvent naming
    the message and the resources it created (so their patients), written through `sessions` at `now`, as the
    acting client. Without it the raw body is left out and nothing extra is audited."""
    prefix, _, number = key.partition("-")
    model = _BY_PREFIX.get(prefix)
    if model is None or not number.isdigit():
        return None
    row = session.execute(select(model).where(model.seq == int(number))).scalar_one_or_none()  # bound: criteria apply
    if row is None:
        return None
    (entry,) = _entries(session, [row])
    raw: bytes | None = getattr(row, "raw", None)
    if raw_allowed and raw is not None:
        if sessions is None or now is None:
            raise ValueError("a raw body is shown only with `sessions` and `now` to audit the view")
        _audit_raw_view(sessions, entry, now)
    problems = tuple(json.loads(row.problems)) if isinstance(row, QuarantinedMessage) else ()
    return MessageDetail(
        entry=entry,
        problems=problems,
        reply=row.response_body if isinstance(row, InboundMessage) else None,
        unused=tuple(json.loads(row.unused)) if isinstance(row, InboundMessage) else (),
        rule_set=row.rule_set if isinstance(row, InboundMessage) else None,
        raw_size=len(raw) if raw is not None else None,
        raw=raw if raw_allowed else None,
    )


def _audit_raw_view(sessions: sessionmaker[Session], entry: LogEntry, now: datetime) -> None:
    """An AuditEvent for one view of a raw body (it holds whatever the sender sent, patient details included)."""
    patients = [r for r in entry.resources if r.startswith("Patient/")]
    resource = audit_event(
        event_type=EVENT_REST,
        interaction="read",
        outcome="0",
        outcome_desc=f"raw body of inbound message {entry.key} ({entry.channel}, {entry.outcome}) shown",
        recorded=now,
        principal=current_principal(),
        address=None,
        entities=[*entry.resources, *patients],
        description=f"console: raw body of message {entry.key}",
    )
    with write_transaction(sessions) as session:
        add_event(session, resource)


def _entries(session: Session, rows: list[Any]) -> list[LogEntry]:
    """Log entries for stored, quarantined and re-send rows: client names and resources looked up once for all."""
    names = _client_names(session, {row.client_id for row in rows if row.client_id})
    named = {id(row): _named_resources(row) for row in rows if isinstance(row, InboundMessage)}
    held = _held(session, {ref for refs in named.values() for ref in refs})
    out = []
    for row in rows:
        common = {
            "channel": row.channel,
            "received_at": row.received_at,
            "client_id": row.client_id,
            "client_name": names.get(row.client_id or ""),
            "message_id": row.message_id,
        }
        if isinstance(row, InboundMessage):
            mllp = (row.client_id or "").startswith("mllp:")
            resources = tuple(ref for ref in named[id(row)] if ref in held)
            ack = "AA" if row.channel == "hl7v2" else None
            entry = LogEntry(
                f"in-{row.seq}",
                transport="mllp" if mllp else "http",
                outcome="accepted",
                **common,
                reply_status=None if mllp else row.response_status,
                ack_code=ack,
                reason=None,
                resources=resources,
            )
        elif isinstance(row, QuarantinedMessage):
            entry = LogEntry(
                f"q-{row.seq}",
                transport=row.transport,
                outcome="refused",
                **common,
                reply_status=row.reply_status,
                ack_code=row.ack_code,
                reason=row.reason,
                resources=(),
            )
        else:
            original = f"in-{row.original_seq}" if row.original_seq is not None else None
            entry = LogEntry(
                f"re-{row.seq}",
                transport=row.transport,
                outcome="duplicate",
                **common,
                reply_status=row.reply_status,
                ack_code=row.ack_code,
                reason=None,
                resources=(),
                duplicate_of=original,
            )
        out.append(entry)
    return out


def _client_names(session: Session, client_ids: set[str]) -> dict[str, str]:
    """Client names by id (a bound session reads no clients: gateway.platform.store.visibility)."""
    if not client_ids:
        return {}
    return dict(session.execute(select(ApiClient.id, ApiClient.name).where(ApiClient.id.in_(client_ids))).all())


def _held(session: Session, references: set[str]) -> set[str]:
    """Which of `references` ("Type/id") the store holds and this session may see."""
    if not references:
        return set()
    pairs = [ref.split("/", 1) for ref in references]
    found: set[str] = set()
    for start in range(0, len(pairs), 200):
        chunk = pairs[start : start + 200]
        where = or_(*(and_(ResourceRow.resource_type == t, ResourceRow.id == i) for t, i in chunk))
        found |= {f"{t}/{i}" for t, i in session.execute(select(ResourceRow.resource_type, ResourceRow.id).where(where))}
    return found


def _named_resources(row: InboundMessage) -> list[str]:
    """The resources a stored message's reply names, in order, without duplicates ("Type/id")."""
    found: list[str] = [f"Task/{row.task_id}"] if row.task_id else []
    try:
        reply = json.loads(row.response_body)
    except ValueError:
        reply = None
    _walk(reply, found)
    return list(dict.fromkeys(found))


def _walk(node: Any, found: list[str]) -> None:
    if isinstance(node, list):
        for item in node:
            _walk(item, found)
        return
    if not isinstance(node, dict):
        return
    if isinstance(node.get("resourceType"), str) and isinstance(node.get("id"), str) and node["resourceType"] not in _NOT_STORED:
        found.append(f"{node['resourceType']}/{node['id']}")
    for name, value in node.items():
        if name in ("location", "reference") and isinstance(value, str):
            _reference(value, found)
        elif name == "resources" and isinstance(value, list):
            for item in value:
                if isinstance(item, str):
                    _reference(item, found)
        elif name == "case_ref" and isinstance(value, str):
            found.append(f"Task/{value}")
        elif isinstance(value, (dict, list)):
            _walk(value, found)


def _reference(text: str, found: list[str]) -> None:
    match = _REFERENCE.match(text.removeprefix("/fhir/"))
    if match and match.group(1) not in _NOT_STORED:
        found.append(f"{match.group(1)}/{match.group(2)}")
