"""The audit trail: a FHIR AuditEvent for every create, read, search, operation and delivery (who, what, when, outcome).

How events get written:

- **Changes** are audited in the same transaction as the change. Every sessionmaker made by
  `gateway.platform.store.db.make_sessionmaker` carries hooks that note each resource row a transaction
  writes and, just before it commits, add one AuditEvent naming them (and their patients). A
  rolled-back change leaves no event; a committed one cannot lack its event.
- **Reads, searches and refusals** (401, 403, 4xx, 5xx, a re-sent message answered from the
  store) have no transaction of their own: the HTTP middleware records them before the reply is
  sent, so no client ever sees data that was not audited. Routes call `note(...)` with the
  resources they return, so a read names the patients it showed.
- **Deliveries** (the outbox worker): call `record_delivery(session, ...)` inside the delivery's
  transaction; it also counts `iap_deliveries_total` once that transaction commits.

Who acted comes from `gateway.platform.security.principal.acting` (set by the auth middleware and by the
MLLP listener); work done outside a request (the safety-call worker, the CLI) is the gateway's own.
Events are append-only rows in `audit_events` (+ `audit_entities` for search by entity/patient),
read at GET /fhir/AuditEvent with the `audit:read` scope. No patient identifier is ever put in an
event's text: entities are references (Patient/<id>), queries are kept base64 as FHIR asks.
"""

from __future__ import annotations

import base64
import socket
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event, insert
from sqlalchemy.orm import Session, sessionmaker

from common.datetimes import to_fhir_instant
from gateway.platform.clock import Clock
from gateway.platform.metrics import DELIVERY_OUTCOMES, count_delivery
from gateway.platform.security.principal import SYSTEM, Principal, acting
from gateway.platform.store.deferred import defer
from gateway.platform.store.jsontext import dumps
from gateway.platform.store.models import AuditEntityRow, AuditEventRow, ResourceRow
from gateway.platform.store.repo import WRITES_KEY, note_write
from gateway.platform.store.writer_lock import write_transaction

__all__ = [
    "AuditContext",
    "install_audit_hooks",
    "close_work",
    "audit_context",
    "act_as",
    "outcome_of",
    "current_audit",
    "note",
    "record",
    "record_delivery",
    "audit_event",
    "add_event",
    "CLIENT_SYSTEM",
    "EVENT_REST",
    "EVENT_IMPORT",
    "EVENT_EXPORT",
    "EVENT_LOGIN",
    "EVENT_APPLICATION",
]

CLIENT_SYSTEM = "https://fhir.iap-gateway.org/Id/client"
_DCM = "http://dicom.nema.org/resources/ontology/DCM"
EVENT_REST = {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"}
EVENT_IMPORT = {"system": _DCM, "code": "110107", "display": "Import"}
EVENT_EXPORT = {"system": _DCM, "code": "110106", "display": "Export"}
EVENT_LOGIN = {"system": _DCM, "code": "110114", "display": "User Authentication"}
EVENT_APPLICATION = {"system": _DCM, "code": "110100", "display": "Application Activity"}
_INTERACTION = "http://hl7.org/fhir/restful-interaction"
_ACTIONS = {"create": "C", "read": "R", "update": "U", "delete": "D", "search": "E", "operation": "E", "login": "E", "none": "R"}
_SUBTYPES = {"search": "search-type"}  # the restful-interaction code for a search of one type
_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
_OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
_MAX_ENTITIES = 500
_SITE = socket.gethostname()[:64]

_current: ContextVar[AuditContext | None] = ContextVar("iap_audit", default=None)


@dataclass
class AuditContext:
    """One request or message being audited: who, from where, what was asked, and what it touched."""

    principal: Principal | None  # None = not (yet) authenticated
    address: str | None
    description: str  # "GET /fhir/Task" (method and path; never the query)
    interaction: str  # create | read | search | operation | update | login | none
    clock: Clock
    event_type: dict[str, str] = field(default_factory=lambda: EVENT_REST)
    query: str = ""  # the raw query string, kept base64 in the event (it may hold identifiers)
    entities: list[str] = field(default_factory=list)
    recorded: bool = False  # an event for this request was committed with its change
    unaudited: bool = False  # this request gets no event (`not_audited`: a message turned away busy)

    @property
    def client(self) -> str | None:
        """The acting client's name, for logs; None before it is known."""
        return self.principal.name if self.principal else None


def request_context(scope: Mapping[str, Any], interaction: str, clock: Clock) -> AuditContext:
    """The audit context of one HTTP request (API or console), before anyone is authenticated: the peer's address,
    method and path as its description, the raw query kept apart."""
    client = scope.get("client")
    return AuditContext(
        principal=None,
        address=client[0] if client else None,
        description=f"{scope['method']} {scope['path']}",
        interaction=interaction,
        clock=clock,
        query=scope.get("query_string", b"").decode("latin-1"),
    )


def current_audit() -> AuditContext | None:
    return _current.get()


@contextmanager
def audit_context(context: AuditContext) -> Iterator[AuditContext]:
    """Audit (and act as context.principal) for the duration: both context variables, reset afterwards."""
    audit_token = _current.set(context)
    principal_token = acting.set(context.principal)
    try:
        yield context
    finally:
        acting.reset(principal_token)
        _current.reset(audit_token)


def not_audited() -> None:
    """Answer the current request without an AuditEvent. Only for a message turned away unread because
    the gateway is busy (`gateway.api.ingest.in_worker_thread`): nothing of it was parsed, read or stored, and turning
    a peak away must cost no write. Its event would take a transaction (on SQLite, the file's one writer, behind the
    very backlog that turned it away), so the busy reply would wait for it and each one turned away would slow the
    messages being taken. It is logged (`request.busy`, with the client) and counted (`iap_messages_total`) instead."""
    context = _current.get()
    if context is not None:
        context.unaudited = True


def act_as(context: AuditContext, principal: Principal) -> None:
    """The request's client is now known (inside `audit_context`): audit and authorise as it."""
    context.principal = principal
    acting.set(principal)


def note(*resources: dict[str, Any]) -> None:
    """What a read returned: the resources and the patients they concern (no-op outside an audited request)."""
    context = _current.get()
    if context is None:
        return
    for resource in resources:
        if len(context.entities) >= _MAX_ENTITIES:
            return
        context.entities.append(f"{resource['resourceType']}/{resource['id']}")
        subject = (resource.get("for") or resource.get("subject") or {}).get("reference")
        if isinstance(subject, str) and subject.startswith("Patient/"):
            context.entities.append(subject)


def audit_event(
    *,
    event_type: dict[str, str],
    interaction: str,
    outcome: str,
    outcome_desc: str,
    recorded: datetime,
    principal: Principal | None,
    address: str | None,
    entities: Iterable[str],
    description: str | None = None,
    query: str = "",
    extra_agents: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """A FHIR R4 AuditEvent (as JSON). outcome: 0 success, 4 minor failure (refused), 8 serious failure (error)."""
    agent: dict[str, Any] = {"requestor": True}
    if principal is not None:
        agent["who"] = {"identifier": {"system": CLIENT_SYSTEM, "value": principal.client_id}, "display": principal.name}
    else:
        agent["who"] = {"display": "unauthenticated client"}
    if address:
        agent["network"] = {"address": address[:64], "type": "2"}  # 2 = IP address
    subtype = event_type is EVENT_REST or event_type is EVENT_APPLICATION
    items: list[dict[str, Any]] = []
    for reference in dict.fromkeys(entities):  # unique, in order
        entry: dict[str, Any] = {
            "what": {"reference": reference},
            "type": {"system": _ENTITY_TYPE, "code": "2", "display": "System Object"},
        }
        if reference.startswith("Patient/"):
            entry["type"] = {"system": _ENTITY_TYPE, "code": "1", "display": "Person"}
            entry["role"] = {"system": _OBJECT_ROLE, "code": "1", "display": "Patient"}
        items.append(entry)
    if description:
        request: dict[str, Any] = {
            "type": {"system": _ENTITY_TYPE, "code": "2", "display": "System Object"},
            "description": description[:256],
        }
        if query:
            request["query"] = base64.b64encode(query.encode()[:4096]).decode()
        items.append(request)
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(uuid.uuid4()),
        "type": event_type,
        "action": _ACTIONS.get(interaction, "E"),
        "recorded": to_fhir_instant(recorded),
        "outcome": outcome,
        "outcomeDesc": outcome_desc[:256],
        "agent": [agent, *extra_agents],
        "source": {
            "site": _SITE,
            "observer": {"display": "iap-gateway"},
            "type": [
                {"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}
            ],
        },
    }
    if subtype and interaction in _ACTIONS and interaction not in ("none", "login"):
        resource["subtype"] = [{"system": _INTERACTION, "code": _SUBTYPES.get(interaction, interaction)}]
    elif interaction == "login":
        resource["subtype"] = [{"system": _DCM, "code": "110122", "display": "Login"}]
    if items:
        resource["entity"] = items
    return resource


_INSERT_EVENT = insert(AuditEventRow)
_INSERT_ENTITIES = insert(AuditEntityRow)


def add_event(session: Session, resource: dict[str, Any]) -> None:
    """Store an AuditEvent in the session's transaction (with one search row per entity reference).

    Plain inserts on the session's connection: no ORM objects, so no unit of work runs for them (this is on
    every request's path)."""
    who = resource["agent"][0].get("who", {}).get("identifier", {}).get("value")
    subtype = (resource.get("subtype") or [{}])[0].get("code", resource["type"]["code"])
    connection = session.connection()
    defer(  # sent with the transaction's COMMIT on PostgreSQL (gateway.platform.store.deferred)
        connection,
        _INSERT_EVENT,
        [
            {
                "id": resource["id"],
                "recorded": datetime.fromisoformat(resource["recorded"].replace("Z", "+00:00")),
                "client_id": who,
                "action": resource["action"],
                "subtype": subtype,
                "outcome": resource["outcome"],
                "content": dumps(resource),
            }
        ],
    )
    references = sorted({e["what"]["reference"][:160] for e in resource.get("entity", []) if "what" in e})
    defer(connection, _INSERT_ENTITIES, [{"reference": ref, "event_id": resource["id"]} for ref in references])


def outcome_of(status: int) -> str:
    return "0" if status < 400 else ("4" if status < 500 else "8")


def record(sessions: sessionmaker[Session], context: AuditContext, outcome: str, outcome_desc: str) -> None:
    """An event for a request or message that changed nothing (a read, a search, a refusal), in its own transaction."""
    resource = audit_event(
        event_type=context.event_type,
        interaction=context.interaction,
        outcome=outcome,
        outcome_desc=outcome_desc,
        recorded=context.clock.now(),
        principal=context.principal,
        address=context.address,
        entities=context.entities,
        description=context.description,
        query=context.query,
    )
    with write_transaction(sessions) as session:
        add_event(session, resource)
    context.recorded = True


def record_delivery(
    session: Session,
    *,
    channel: str,
    destination: str,
    entities: Sequence[str],
    outcome: str,
    detail: str,
    now: datetime,
) -> None:
    """Audit one delivery event in the caller's transaction; count it in `iap_deliveries_total` when that commits.

    channel: how it went ("mesh", "fhir", "print"; "none" when withheld before routing); destination: where
    (a mailbox id, an endpoint URL, an ODS code, never a patient identifier); entities: what was sent
    ("DocumentReference/<id>", "Patient/<id>"); outcome: one of `gateway.platform.metrics.DELIVERY_OUTCOMES`;
    detail: why, in words.
    """
    fhir_outcome = {"sent": "0", "delivered": "0", "withheld": "0", "retry": "4", "unacknowledged": "4", "failed": "8", "dead": "8"}.get(
        outcome
    )
    if fhir_outcome is None:
        raise ValueError(f"delivery outcome must be one of {DELIVERY_OUTCOMES}")
    receiver = {"who": {"display": destination[:128]}, "requestor": False, "name": channel[:64]}
    resource = audit_event(
        event_type=EVENT_EXPORT,
        interaction="read",  # DICOM Export: the data is read out to the destination
        outcome=fhir_outcome,
        outcome_desc=f"{outcome}: {detail}",
        recorded=now,
        principal=SYSTEM,
        address=None,
        entities=entities,
        description=f"deliver via {channel}",
        extra_agents=[receiver],
    )
    add_event(session, resource)
    session.info.setdefault(_ON_COMMIT, []).append(lambda: count_delivery(channel, outcome))


# -- the transaction hooks ------------------------------------------------------------------------

_COMMITTING = "iap_audit_committing"  # session.info: the audit contexts whose events this transaction commits
_ON_COMMIT = "iap_on_commit"  # session.info: what to do once it has committed (count a delivery)


def install_audit_hooks(sessions: sessionmaker[Session]) -> None:
    """Every transaction of `sessions` that writes resources commits an AuditEvent naming them."""
    event.listen(sessions, "after_flush", _collect_writes)
    event.listen(sessions, "before_commit", _add_change_event)
    event.listen(sessions, "after_commit", _after_commit)
    event.listen(sessions, "after_rollback", _after_rollback)


def _collect_writes(session: Session, _flush_context: Any) -> None:
    for row in (*session.new, *session.dirty):
        if isinstance(row, ResourceRow):
            note_write(session, f"{row.resource_type}/{row.id}", row in session.new, row.subject_id)


def _add_change_event(session: Session) -> None:
    if session.new or session.dirty:
        session.flush()  # so the writes about to be committed are collected
    writes: dict[str, tuple[bool, str | None]] | None = session.info.pop(WRITES_KEY, None)
    if not writes:
        return
    context = _current.get()
    entities: list[str] = []
    for reference, (_created, subject) in writes.items():
        entities.append(reference)
        if subject:
            entities.append(f"Patient/{subject}")
    if context is not None:
        interaction = context.interaction if context.interaction in ("create", "update", "operation") else "update"
        principal, address, event_type, description = context.principal, context.address, context.event_type, context.description
        now = context.clock.now()
    else:
        interaction = "create" if any(created for created, _ in writes.values()) else "update"
        principal, address, event_type, description, now = SYSTEM, None, EVENT_APPLICATION, "internal", datetime.now(UTC)
    resource = audit_event(
        event_type=event_type,
        interaction=interaction,
        outcome="0",
        outcome_desc="committed",
        recorded=now,
        principal=principal,
        address=address,
        entities=entities[:_MAX_ENTITIES],
        description=description,
    )
    add_event(session, resource)
    if context is not None:
        session.info.setdefault(_COMMITTING, []).append(context)


def _after_commit(session: Session) -> None:
    for context in session.info.pop(_COMMITTING, []):
        context.recorded = True
    for action in session.info.pop(_ON_COMMIT, []):
        action()


def _after_rollback(session: Session) -> None:
    for key in (WRITES_KEY, _COMMITTING, _ON_COMMIT):
        session.info.pop(key, None)


def close_work(session: Session) -> None:
    """End one sender's work inside a transaction shared with others' (`gateway.platform.store.group_commit`): add the
    AuditEvent of its writes, in its own audit context (who sent it), as its own transaction's commit would have."""
    _add_change_event(session)
