"""Console sign-in sessions, kept server-side (a table), so every replica sees the same and a sign-out holds at once.

The browser holds only a random secret (the cookie); the store keeps its SHA-256, the client it signed in as, the
session's CSRF token and when it was last used. A session unused for the idle timeout (setting
`console_idle_minutes`) is over; so is every session of a client that has been revoked (its scopes and service
are read from the client on every request, as an API key's are).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ForeignKey, String, delete, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from gateway.platform.security.principal import Principal
from gateway.platform.store.db import write_transaction
from gateway.platform.store.models import ApiClient, Base, UTCDateTime

__all__ = ["ConsoleSessionRow", "ConsoleLogin", "start_session", "resume_session", "end_session"]

_TOUCH_EVERY = timedelta(seconds=30)  # last_seen is written at most this often: a page view is not a write each time


class ConsoleSessionRow(Base):
    """One signed-in console session: the cookie secret's SHA-256, who, its CSRF token, when it was last used."""

    __tablename__ = "console_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 hex of the cookie's secret
    client_id: Mapped[str] = mapped_column(String(64), ForeignKey("api_clients.id", ondelete="CASCADE"), nullable=False, index=True)
    csrf: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, index=True)


@dataclass(frozen=True)
class ConsoleLogin:
    """A live session: who is signed in and the token every form of theirs must carry."""

    principal: Principal
    csrf: str


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def start_session(sessions: sessionmaker[Session], principal: Principal, now: datetime, idle: timedelta) -> tuple[str, str]:
    """A new session for `principal`: (cookie secret, CSRF token). Sessions idle past `idle` are cleared on the way."""
    secret, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    with write_transaction(sessions) as session:
        session.execute(delete(ConsoleSessionRow).where(ConsoleSessionRow.last_seen_at < now - idle))
        session.add(ConsoleSessionRow(id=_digest(secret), client_id=principal.client_id, csrf=csrf, created_at=now, last_seen_at=now))
    return secret, csrf


def resume_session(sessions: sessionmaker[Session], secret: str | None, now: datetime, idle: timedelta) -> ConsoleLogin | None:
    """The live session this cookie secret opens, or None (no such session, idle too long, or its client revoked)."""
    if not secret or len(secret) > 128:
        return None
    digest = _digest(secret)
    with sessions() as session:
        found = session.execute(
            select(ConsoleSessionRow, ApiClient)
            .join(ApiClient, ApiClient.id == ConsoleSessionRow.client_id)
            .where(ConsoleSessionRow.id == digest)
        ).first()
    if found is None:
        return None
    row, client = found
    if not client.active or row.last_seen_at + idle <= now:
        end_session(sessions, secret)
        return None
    if now - row.last_seen_at >= _TOUCH_EVERY:
        with write_transaction(sessions) as session:
            session.execute(update(ConsoleSessionRow).where(ConsoleSessionRow.id == digest).values(last_seen_at=now))
    principal = Principal(client.id, client.name, frozenset(client.scopes.split()), client.service_id)
    return ConsoleLogin(principal, row.csrf)


def end_session(sessions: sessionmaker[Session], secret: str | None) -> None:
    """Sign out: the session is deleted (a copy of the cookie opens nothing afterwards)."""
    if secret and len(secret) <= 128:
        with write_transaction(sessions) as session:
            session.execute(delete(ConsoleSessionRow).where(ConsoleSessionRow.id == _digest(secret)))
