"""Tables. Resources are kept as FHIR JSON with meta.versionId/lastUpdated, plus indexed search columns."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, DateTime, Index, Integer, LargeBinary, String, Text, UniqueConstraint, text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = [
    "Base",
    "ResourceRow",
    "IdentifierRow",
    "TokenRow",
    "InboundMessage",
    "UTCDateTime",
    "OutboxRow",
    "OutboxEvent",
    "ApiClient",
    "AccessToken",
    "UsedAssertion",
    "AuditEventRow",
    "AuditEntityRow",
    "OPEN_CAS_CASE",
    "ResourceVersionRow",
    "KEPT_VERSIONS",
    "GpPracticeRow",
    "RuleFileVersionRow",
    "QuarantinedMessage",
    "ResentMessage",
]

# The rows on the CAS queue (CAS-02): open CAS cases. Written out with literal values, as the partial queue indexes'
# predicate; gateway.platform.store.queue_index writes the same condition the same way, so both stores use those indexes.
OPEN_CAS_CASE = (
    "resource_type = 'Task' AND breach_at IS NOT NULL"
    " AND status IN ('requested', 'received', 'accepted', 'ready', 'in-progress', 'on-hold')"
)

# Task search's sort keys, each with its own index. Not partial (of Tasks alone): a search's type is a bound parameter,
# and SQLite uses a partial index only for a query that names its predicate's values.
TASK_SORTS = (
    ("authored", "authored_on"),
    ("updated", "last_updated"),
    ("priority", "priority"),
    ("status", "status"),
    ("breach", "breach_at"),
)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite keeps no zone: we store UTC and re-attach it)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class ResourceRow(Base):
    __tablename__ = "resources"

    resource_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version_id: Mapped[int] = mapped_column(Integer, nullable=False)
    last_updated: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    content: Mapped[str] = mapped_column(Text, nullable=False)
    # search columns (filled for the types that use them)
    status: Mapped[str | None] = mapped_column(String(32))
    business_status: Mapped[str | None] = mapped_column(String(64))
    priority: Mapped[str | None] = mapped_column(String(16))
    subject_id: Mapped[str | None] = mapped_column(String(64))
    service_id: Mapped[str | None] = mapped_column(String(32))
    authored_on: Mapped[datetime | None] = mapped_column(UTCDateTime)
    breach_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    effective_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # Observation.effective / QR.authored: `date` search

    __table_args__ = (
        Index("ix_resources_type_status", "resource_type", "status"),
        Index("ix_resources_type_subject", "resource_type", "subject_id"),
        Index("ix_resources_queue", "resource_type", "service_id", "breach_at"),
        # the queue (CAS-02) and its summary read only open cases, in breach order: partial indexes of those alone,
        # holding every column the queue and summary read (both stores answer from the index alone), the type and
        # service first (SQLite, with no statistics, takes an index by its equality columns: these must win)
        Index(
            "ix_resources_open_queue_service",
            *("resource_type", "service_id", "breach_at", "authored_on", "id"),
            *("status", "business_status", "subject_id", "priority"),
            postgresql_where=text(OPEN_CAS_CASE),
            sqlite_where=text(OPEN_CAS_CASE),
        ),
        Index(
            "ix_resources_open_queue",
            *("resource_type", "breach_at", "authored_on", "id"),
            *("status", "service_id", "business_status", "subject_id", "priority"),
            postgresql_where=text(OPEN_CAS_CASE),
            sqlite_where=text(OPEN_CAS_CASE),
        ),
        # one per `_sort` key of Task search (repo._SORTABLE), the id last as the searches order ties
        *(Index(f"ix_tasks_sort_{name}", "resource_type", column, "id") for name, column in TASK_SORTS),
        # `date` order of the searches of other types (repo.search_resources), and a window of recent decisions (CAS-16)
        Index("ix_resources_sort_effective", "resource_type", "effective_at", "id"),
        # the patients a service holds: what a client bound to it may see of Patients (gateway.platform.store.visibility)
        Index("ix_resources_service_subject", "service_id", "subject_id"),
    )


class IdentifierRow(Base):
    """One row per (resource, identifier): search by identifier, and one resource per identifier."""

    __tablename__ = "resource_identifiers"

    resource_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    system: Mapped[str] = mapped_column(String(255), primary_key=True)
    value: Mapped[str] = mapped_column(String(255), primary_key=True)
    resource_id: Mapped[str] = mapped_column(String(64), nullable=False)


class TokenRow(Base):
    """Token search values (e.g. Observation `code`, QuestionnaireResponse `questionnaire`), one row per coding."""

    __tablename__ = "resource_tokens"

    resource_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    resource_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    param: Mapped[str] = mapped_column(String(32), primary_key=True)
    system: Mapped[str] = mapped_column(String(255), primary_key=True)
    code: Mapped[str] = mapped_column(String(255), primary_key=True)

    __table_args__ = (Index("ix_tokens_lookup", "resource_type", "param", "code"),)


class InboundMessage(Base):
    """Every accepted inbound message: raw bytes (for replay), and the reply it got (for re-sends).

    Unique (channel, message_id) and (channel, header_id) make a re-sent message a
    no-op even when two copies race on PostgreSQL.
    """

    __tablename__ = "inbound_messages"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    channel: Mapped[str] = mapped_column(String(32), nullable=False)
    message_id: Mapped[str] = mapped_column(String(128), nullable=False)
    header_id: Mapped[str | None] = mapped_column(String(128))
    correlation_id: Mapped[str | None] = mapped_column(String(128))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    raw: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    task_id: Mapped[str | None] = mapped_column(String(64))
    rule_set: Mapped[str | None] = mapped_column(String(64))
    unused: Mapped[str] = mapped_column(Text, nullable=False, default="[]")
    response_status: Mapped[int] = mapped_column(Integer, nullable=False)
    response_body: Mapped[str] = mapped_column(Text, nullable=False)
    # who sent it and the service it went to (its resources' service, else the sender's binding): the console's
    # message log and its service binding (gateway.platform.store.visibility); None for messages stored before 0011
    client_id: Mapped[str | None] = mapped_column(String(64))
    service_id: Mapped[str | None] = mapped_column(String(32))

    __table_args__ = (
        UniqueConstraint("channel", "message_id", name="uq_inbound_channel_message"),
        UniqueConstraint("channel", "header_id", name="uq_inbound_channel_header"),
        Index("ix_inbound_received", "received_at"),  # the console's counts and log read a window of time
    )


class QuarantinedMessage(Base):
    """A refused inbound message, kept IAP_QUARANTINE_RETENTION_DAYS days so that an operator can answer "what happened
    to it?" (docs/quarantine.md): the problems found, the reply it got, its raw body. Not clinical data: no patient
    link, no identifier indexed, never searched or read through /fhir; purged by `gateway.platform.quarantine.purge`."""

    __tablename__ = "quarantine"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    channel: Mapped[str] = mapped_column(String(32), nullable=False)  # as inbound_messages.channel
    transport: Mapped[str] = mapped_column(String(8), nullable=False)  # http | mllp
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    client_id: Mapped[str | None] = mapped_column(String(64))  # api_clients.id, or mllp:<peer address>
    service_id: Mapped[str | None] = mapped_column(String(32))  # the sender's bound service (console binding)
    message_id: Mapped[str | None] = mapped_column(String(128))  # as far as it could be read (gateway.platform.store.keys)
    reason: Mapped[str] = mapped_column(String(64), nullable=False)  # the first error's issue code, or the HL7 ACK and ERR code
    reply_status: Mapped[int | None] = mapped_column(Integer)  # HTTP status (None over MLLP)
    ack_code: Mapped[str | None] = mapped_column(String(2))  # HL7 v2 MSA-1 (AE, AR)
    problems: Mapped[str] = mapped_column(Text, nullable=False)  # JSON: the OperationOutcome issues (HL7: MSA-3 and ERR)
    raw: Mapped[bytes | None] = mapped_column(LargeBinary)  # as received; None when it was not all received (too large, too slow)

    __table_args__ = (Index("ix_quarantine_received", "received_at"),)


class ResentMessage(Base):
    """A re-sent message, answered from the store with its original reply: counted for the console, nothing else kept
    (the original, in inbound_messages, holds the body). Purged with the quarantine log."""

    __tablename__ = "resent_messages"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    channel: Mapped[str] = mapped_column(String(32), nullable=False)
    transport: Mapped[str] = mapped_column(String(8), nullable=False)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    client_id: Mapped[str | None] = mapped_column(String(64))
    service_id: Mapped[str | None] = mapped_column(String(32))
    message_id: Mapped[str | None] = mapped_column(String(128))
    original_seq: Mapped[int | None] = mapped_column(Integer)  # inbound_messages.seq, when the reply named it
    reply_status: Mapped[int | None] = mapped_column(Integer)
    ack_code: Mapped[str | None] = mapped_column(String(2))

    __table_args__ = (Index("ix_resent_received", "received_at"),)


class OutboxRow(Base):
    """One delivery of one letter to one recipient (the durable outbox).

    Written in the same transaction as the event that caused the letter; a worker claims due
    rows (PostgreSQL `FOR UPDATE SKIP LOCKED`, then a lease), sends, and records the outcome.
    Status: pending -> sending -> sent -> delivered, or failed (the receiver refused it after
    sending), dead (attempts exhausted or a permanent error), withheld (consent, TT-14),
    superseded (a newer version of the letter replaced it before it went).
    """

    __tablename__ = "outbox"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    letter_id: Mapped[str] = mapped_column(String(64), nullable=False)
    letter_type: Mapped[str] = mapped_column(String(40), nullable=False)
    patient_id: Mapped[str | None] = mapped_column(String(64))
    recipient_kind: Mapped[str] = mapped_column(String(16), nullable=False)  # gp | referrer | patient
    recipient: Mapped[str] = mapped_column(String(255), nullable=False)  # ODS code, or Patient/id
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    transport: Mapped[str | None] = mapped_column(String(16))  # mesh | fhir | print (the route of the last attempt)
    address: Mapped[str | None] = mapped_column(String(255))  # mailbox, GPPROVIDER_ address, URL, folder
    workflow_id: Mapped[str | None] = mapped_column(String(64))
    message_id: Mapped[str | None] = mapped_column(String(64))  # MESH message id, or the receiver's resource id
    itk_message_id: Mapped[str | None] = mapped_column(String(64))  # the ITK3 MessageHeader id its acknowledgements quote
    reason: Mapped[str | None] = mapped_column(Text)  # why it is withheld / dead / failed, or the last error
    outcome: Mapped[str | None] = mapped_column(Text)  # the receiver's OperationOutcome (JSON), when it sent one
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)

    __table_args__ = (
        Index("ix_outbox_due", "status", "next_attempt_at"),
        Index("ix_outbox_letter", "letter_id"),
        Index("ix_outbox_message", "message_id"),
        Index("ix_outbox_itk_message", "itk_message_id"),
    )


class OutboxEvent(Base):
    """Everything that happened to a delivery, in order: each attempt, acknowledgements, decisions, replays."""

    __tablename__ = "outbox_events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(String(64), nullable=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    kind: Mapped[str] = mapped_column(String(24), nullable=False)
    outcome: Mapped[str] = mapped_column(String(32), nullable=False)
    detail: Mapped[str] = mapped_column(Text, nullable=False, default="")

    __table_args__ = (Index("ix_outbox_events_delivery", "delivery_id", "seq"),)


class ApiClient(Base):
    """A client system (a 111 provider, RiO, CLEO, an operator UI): its scopes and its credentials, never in clear.

    `key_hash` is a scrypt hash of the API key's secret part (the key is shown once, at creation);
    `jwks` holds the public keys its signed JWT client assertions are checked against (private_key_jwt).
    `service_id` binds the client to one CAS service (queue views, case operations, CLEO, RiO notes).
    """

    __tablename__ = "api_clients"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    scopes: Mapped[str] = mapped_column(Text, nullable=False)  # space-separated
    service_id: Mapped[str | None] = mapped_column(String(32))
    key_id: Mapped[str | None] = mapped_column(String(32), unique=True)
    key_hash: Mapped[str | None] = mapped_column(String(255))
    jwks: Mapped[str | None] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AccessToken(Base):
    """An access token issued at the token endpoint for a verified client assertion: only its SHA-256 is kept."""

    __tablename__ = "access_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(64), nullable=False)
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, index=True)


class UsedAssertion(Base):
    """A client assertion's `jti`, kept until the assertion expires: the primary key makes each usable once, across instances."""

    __tablename__ = "used_assertions"

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    jti: Mapped[str] = mapped_column(String(255), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, index=True)


class AuditEventRow(Base):
    """One FHIR AuditEvent (JSON), with the columns `/fhir/AuditEvent` searches on. Append-only."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    recorded: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, index=True)
    client_id: Mapped[str | None] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(1), nullable=False)
    subtype: Mapped[str] = mapped_column(String(32), nullable=False)
    outcome: Mapped[str] = mapped_column(String(2), nullable=False)
    content: Mapped[str] = mapped_column(Text, nullable=False)


class AuditEntityRow(Base):
    """What an AuditEvent concerns, one row per reference ("Task/…", "Patient/…"): search by entity or patient."""

    __tablename__ = "audit_entities"

    reference: Mapped[str] = mapped_column(String(160), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)


# The types whose every version is kept (resource_versions): the ones that change over their life. A Task's versions
# are the proof that a case was never downgraded (CAS-08). Not kept: what is written once and never changed
# (Provenance, Observation, QuestionnaireResponse, AuditEvent) and letters' documents (large, a new one per version).
KEPT_VERSIONS = ("Task", "Patient", "EpisodeOfCare", "ServiceRequest", "Encounter", "Flag", "CarePlan", "Consent", "CommunicationRequest")


class ResourceVersionRow(Base):
    """Every version of a resource of the KEPT_VERSIONS types, as it was stored (written with it, append-only):
    FHIR vread and _history."""

    __tablename__ = "resource_versions"

    resource_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_updated: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    content: Mapped[str] = mapped_column(Text, nullable=False)


class GpPracticeRow(Base):
    """The GP practice directory (NHS England ODS `epraccur.csv`; `iap-gateway practices load`): who "To:" names on a
    letter to a practice (issue 34). Replaced row by row when the file is loaded again."""

    __tablename__ = "gp_practices"

    ods: Mapped[str] = mapped_column(String(10), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    address: Mapped[str] = mapped_column(Text, nullable=False)  # address lines then postcode, one per line
    status: Mapped[str] = mapped_column(String(1), nullable=False)  # ODS status: A active, C closed, D dormant, P proposed
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class RuleFileVersionRow(Base):
    """One activation of a rule file version (`iap-gateway rules activate`, issue 37): its content as activated, who
    activated it and when. Append-only: going back to an earlier version is another activation. Decisions name the
    version that made them (`label`); `$explain` shows its activation from here."""

    __tablename__ = "rule_file_versions"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)  # cas-queue | pathway | sender
    service_id: Mapped[str] = mapped_column(String(64), nullable=False)
    version: Mapped[str] = mapped_column(String(64), nullable=False)
    label: Mapped[str] = mapped_column(String(128), nullable=False)  # as decisions name it ("bnssg cas-queue 2026.12.3")
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    content: Mapped[str] = mapped_column(Text, nullable=False)
    activated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    activated_by: Mapped[str] = mapped_column(String(128), nullable=False)

    __table_args__ = (Index("ix_rule_file_versions_label", "label", "seq"),)
