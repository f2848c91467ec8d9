"""Tables. Resources are kept as FHIR JSON with meta.versionId/lastUpdated, plus indexed search columns."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = ["Base", "ResourceRow", "IdentifierRow", "TokenRow", "InboundMessage", "UTCDateTime"]


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

    __table_args__ = (
        UniqueConstraint("channel", "message_id", name="uq_inbound_channel_message"),
        UniqueConstraint("channel", "header_id", name="uq_inbound_channel_header"),
    )
