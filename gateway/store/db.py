"""Engine, sessions and migrations."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from weakref import WeakKeyDictionary

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

__all__ = ["make_engine", "make_sessionmaker", "migrate", "write_transaction", "MIGRATIONS_DIR"]

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_SQLITE_WRITERS: WeakKeyDictionary[Engine, threading.RLock] = WeakKeyDictionary()


def make_engine(url: str, statement_timeout_ms: int = 0) -> Engine:
    """An engine for `url`. SQLite gets WAL, durable commits, a busy timeout and foreign keys; PostgreSQL a pool and,
    when given, a statement timeout (so no request can hold a connection or a lock for ever)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # FULL: each commit is on disk before it returns, so an acknowledged message survives a power cut too
            # (in WAL mode NORMAL survives a crash of the process, not of the machine). Costs one fsync per commit.
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        _SQLITE_WRITERS[engine] = threading.RLock()
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    connect_args = {"options": f"-c statement_timeout={statement_timeout_ms}"} if statement_timeout_ms else {}
    return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True, connect_args=connect_args)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions for `engine`; every transaction that writes resources commits its AuditEvent with it (gateway.audit)."""
    from gateway.audit import install_audit_hooks

    sessions = sessionmaker(engine, expire_on_commit=False)
    install_audit_hooks(sessions)
    return sessions


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (idempotent; the prestart step)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


@contextmanager
def write_transaction(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """`sessions.begin()` for a transaction that writes; on SQLite, one such transaction at a time per process.

    SQLite has one writer. Threads that meet its lock sleep in its busy handler (1, 2, 5, 10, ... ms
    steps), so under load a few unlucky messages waited seconds (bench/README.md); here they queue
    on a lock and start as soon as the writer before them commits. PostgreSQL: no lock.
    """
    engine = sessions.kw.get("bind")
    lock = _SQLITE_WRITERS.get(engine) if isinstance(engine, Engine) else None
    with lock or nullcontext(), sessions.begin() as session:
        yield session
