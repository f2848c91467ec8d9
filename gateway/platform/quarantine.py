"""The quarantine log: every refused inbound message kept for a while, and every re-send counted (docs/quarantine.md).

A refused message stores nothing of what it carried (nothing half-stored), so without this nobody could answer
"RiO says it sent a message at 10:02: what happened to it?". The transport that received a message (the HTTP
middleware `gateway.api.receipts`, the MLLP listener) opens a `Receipt` for it, answers it exactly as before, and
then keeps what the answer says of it:

- refused (HTTP 4xx other than 401/403/429, or an HL7 ACK AE/AR): one `quarantine` row with the channel, time,
  client, message id as far as it could be read, the problems (the OperationOutcome issues, or MSA-3 and ERR), the
  reply's status or ACK code and the raw body;
- answered as a re-send (`X-Duplicate-Of`, a BaRS 409 duplicate, an HL7 message noted by its intake): one
  `resent_messages` row, no body (the original holds it);
- a batch (PCMIS, SystmOne) answered 200 row by row: its intake notes each refused row and each re-sent row
  (`note_refused`, `note_resent`), kept one row each with the row's own bytes.

Turned away busy (503) or failed by the gateway (5xx, an AR for a store outage) is neither: the sender sends it again,
and it is counted in `iap_messages_total` only. Unauthenticated senders (401/403/429) never reach a route: nothing of
theirs is kept (a store anyone could fill). Keeping is a write of its own after the reply went: it never changes the
reply, and when it fails it is logged (`quarantine.not_kept`, no content) and counted (`iap_quarantine_failures_total`).

Not clinical data: no patient link, no identifier index, not a FHIR resource (`/fhir` cannot reach it), and purged
after IAP_QUARANTINE_RETENTION_DAYS (`purge`, run by the ticker with the injected clock).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import delete, insert
from sqlalchemy.orm import Session, sessionmaker

from gateway.platform.metrics import QUARANTINE_FAILURES
from gateway.platform.store.db import write_transaction
from gateway.platform.store.jsontext import dumps
from gateway.platform.store.keys import message_key
from gateway.platform.store.models import QuarantinedMessage, ResentMessage

__all__ = [
    "Receipt",
    "receiving",
    "note_refused",
    "note_resent",
    "settle",
    "keep",
    "purge",
    "message_id_of",
    "hl7_problems",
    "CHANNEL_OF_SOURCE",
    "HTTP",
    "MLLP",
]

log = structlog.get_logger("iap.quarantine")
HTTP, MLLP = "http", "mllp"
# the scope table's `source` of an intake route -> the channel its messages are stored under (inbound_messages.channel)
CHANNEL_OF_SOURCE = {"nhs111": "nhs111-case"}
_JSON_IDS = {"nhs111-case": "case_id", "mhpl": "call_id", "cleo": "update_id"}  # where flat JSON formats carry their id
_NOT_KEPT_STATUSES = frozenset({401, 403, 429})  # refused before reaching a route: nothing of an unknown sender is kept
_MAX_ISSUES = 100


@dataclass
class _Refused:
    message_id: str | None
    raw: bytes | None
    problems: list[dict[str, Any]]


@dataclass
class _Resent:
    message_id: str | None
    original_seq: int | None


@dataclass
class Receipt:
    """One inbound message (or batch) as its transport received it, and what its intake noted of its parts."""

    channel: str
    transport: str
    received_at: datetime
    client_id: str | None
    service_id: str | None
    refused: list[_Refused] = field(default_factory=list)
    resent: list[_Resent] = field(default_factory=list)
    noted: bool = False  # the intake noted its parts: the whole reply is not judged again
    reply_status: int | None = None
    ack_code: str | None = None


_current: ContextVar[Receipt | None] = ContextVar("iap_receipt", default=None)


@contextmanager
def receiving(receipt: Receipt) -> Iterator[Receipt]:
    """`receipt` is the message being received for the duration (worker threads see it: they run in a copy of the context)."""
    token = _current.set(receipt)
    try:
        yield receipt
    finally:
        _current.reset(token)


def note_refused(message_id: str | None, raw: bytes, problems: list[dict[str, Any]]) -> None:
    """A part of the message being received (a batch row) was refused: kept with its own bytes and problems."""
    receipt = _current.get()
    if receipt is not None:
        receipt.noted = True
        receipt.refused.append(_Refused(message_key(message_id), raw, problems[:_MAX_ISSUES]))


def note_resent(message_id: str | None, original_seq: int | None = None) -> None:
    """The message being received (or a part of it) was answered as a re-send of stored message `original_seq`."""
    receipt = _current.get()
    if receipt is not None:
        receipt.noted = True
        receipt.resent.append(_Resent(message_key(message_id), original_seq))


def settle(
    receipt: Receipt,
    *,
    status: int | None,
    ack_code: str | None,
    reply: bytes,
    raw: bytes | None,
    headers: Mapping[str, str],
    duplicate_of: int | None = None,
) -> None:
    """Judge the whole reply when the intake noted nothing of its parts: refused, a re-send, or neither (taken, busy,
    failed). `raw` is None when the body was not all received; `headers` are the request's (lower-case names);
    `duplicate_of` the stored message a reply's `X-Duplicate-Of` names."""
    receipt.reply_status, receipt.ack_code = status, ack_code
    if receipt.noted or status in _NOT_KEPT_STATUSES or (status is not None and status >= 500):
        return
    if duplicate_of is not None:
        receipt.resent.append(_Resent(message_id_of(receipt.channel, raw, headers), duplicate_of))
        return
    if ack_code is not None:  # HL7 v2: the ACK is the reply, whatever the HTTP status
        if ack_code in ("AE", "AR"):
            receipt.refused.append(_Refused(message_id_of(receipt.channel, raw, headers), raw, hl7_problems(reply)))
        return
    if status is None or status < 400:
        return
    issues = _issues(reply)
    if status == 409 and issues and issues[0].get("code") == "duplicate":  # BaRS: the message was already processed
        receipt.resent.append(_Resent(message_id_of(receipt.channel, raw, headers), None))
        return
    receipt.refused.append(_Refused(message_id_of(receipt.channel, raw, headers), raw, issues))


def keep(sessions: sessionmaker[Session], receipt: Receipt) -> None:
    """Write what `receipt` holds (refusals, re-sends) in a transaction of its own. Never raises: a failure is logged
    and counted, and the sender has had its reply already."""
    if not receipt.refused and not receipt.resent:
        return
    common = {
        "channel": receipt.channel,
        "transport": receipt.transport,
        "received_at": receipt.received_at,
        "client_id": receipt.client_id,
        "service_id": receipt.service_id,
        "reply_status": receipt.reply_status,
        "ack_code": receipt.ack_code,
    }
    refused = [
        common | {"message_id": r.message_id, "reason": _reason(r.problems, receipt.ack_code), "problems": dumps(r.problems), "raw": r.raw}
        for r in receipt.refused
    ]
    resent = [common | {"message_id": r.message_id, "original_seq": r.original_seq} for r in receipt.resent]
    try:
        with write_transaction(sessions) as session:
            if refused:
                session.execute(insert(QuarantinedMessage), refused)
            if resent:
                session.execute(insert(ResentMessage), resent)
    except Exception as error:  # noqa: BLE001 - the refusal has been answered; losing its copy must not become a fault
        QUARANTINE_FAILURES.labels(channel=receipt.channel).inc()
        log.error("quarantine.not_kept", channel=receipt.channel, refused=len(refused), resent=len(resent), error=type(error).__name__)


def purge(sessions: sessionmaker[Session], retention: timedelta, now: datetime) -> int:
    """Delete quarantined messages and re-send records received before `now - retention`; how many went.
    The ticker runs it with the injected clock's time (gateway.api.app)."""
    before = now - retention
    with write_transaction(sessions) as session:
        connection = session.connection()
        gone = connection.execute(delete(QuarantinedMessage).where(QuarantinedMessage.received_at < before)).rowcount
        gone += connection.execute(delete(ResentMessage).where(ResentMessage.received_at < before)).rowcount
    if gone:
        log.info("quarantine.purged", rows=gone, retention_days=retention.days)
    return int(gone)


def message_id_of(channel: str, raw: bytes | None, headers: Mapping[str, str]) -> str | None:
    """The message's id as far as a refused message lets it be read (its intake's key where it can be worked out):
    BaRS X-Request-Id; HL7 MSH-4|MSH-10; the flat JSON's id field; a pathway referral's identifier system|value."""
    if channel == "bars":
        return message_key(headers.get("x-request-id") or None)
    if raw is None:
        return None
    if channel == "hl7v2":
        return message_key(_hl7_key(raw))
    if channel not in _JSON_IDS and channel not in ("pathway-referral", "questionnaire-response"):
        return None  # a CSV batch has no id of its own (its rows do)
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(body, dict):
        return None
    value: Any
    if channel == "pathway-referral":
        first = (body.get("identifier") or [None])[0] if isinstance(body.get("identifier"), list) else None
        value = f"{first.get('system')}|{first.get('value')}" if isinstance(first, dict) and first.get("value") else None
    elif channel == "questionnaire-response":
        ident = body.get("identifier")
        value = ident.get("value") if isinstance(ident, dict) and ident.get("value") else body.get("id")
    else:
        value = body.get(_JSON_IDS[channel])
    return message_key(value) if isinstance(value, str) and value else None


def _hl7_key(raw: bytes) -> str | None:
    """MSH-4 (its first component) and MSH-10, as the HL7 intake keys a message, or None when MSH cannot be read."""
    text = raw.decode("latin-1")
    start = text.find("MSH")
    if start < 0 or len(text) < start + 8:
        return None
    segment = text[start:].replace("\n", "\r").split("\r", 1)[0]
    separator = segment[3]
    fields = segment.split(separator)
    if len(fields) < 10 or not fields[9]:
        return None
    component = fields[1][:1] or "^"
    return f"{fields[3].split(component, 1)[0]}|{fields[9]}"


def hl7_problems(ack: bytes) -> list[dict[str, Any]]:
    """An AE/AR ACK's reason as OperationOutcome-shaped issues: MSA-3's text, ERR's location and HL7 table 0357 code."""
    segments = ack.decode("utf-8", "replace").replace("\n", "\r").split("\r")
    msa = next((s.split("|") for s in segments if s.startswith("MSA|")), [])
    err = next((s.split("|") for s in segments if s.startswith("ERR|")), [])
    text = msa[3] if len(msa) > 3 else ""
    issue: dict[str, Any] = {"severity": "error", "code": msa[1] if len(msa) > 1 else "AR", "diagnostics": text}
    if len(err) > 1:
        location = err[1].split("^")
        code = location[3].split("&", 1)[0] if len(location) > 3 else ""
        if code:
            issue["details"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0357", "code": code}]}
        where = "-".join(part for part in (location[0], location[2] if len(location) > 2 else "") if part)
        if where:
            issue["expression"] = [where]
    return [issue]


def _issues(reply: bytes) -> list[dict[str, Any]]:
    """An OperationOutcome reply's issues ([] when the reply is not one)."""
    try:
        body = json.loads(reply)
    except (ValueError, RecursionError):
        return []
    found = body.get("issue") if isinstance(body, dict) else None
    return [i for i in found if isinstance(i, dict)][:_MAX_ISSUES] if isinstance(found, list) else []


def _reason(problems: list[dict[str, Any]], ack_code: str | None) -> str:
    """A refusal's reason, for counts by reason: the first error issue's code (FHIR issue type), or the ACK code and
    its HL7 table 0357 code ("AE 205")."""
    first = next((p for p in problems if p.get("severity") in ("error", "fatal")), problems[0] if problems else {})
    if ack_code is not None:
        coding = ((first.get("details") or {}).get("coding") or [{}])[0]
        return f"{ack_code} {coding.get('code', '')}".strip()[:64]
    return str(first.get("code") or "refused")[:64]
