"""Engine, sessions and migrations (the SQLite writer lock: `writer_lock`; what a database error means: `failures`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from gateway.platform.store.database_url import normalise_database_url
from gateway.platform.store.deferred import send_deferred_writes_together
from gateway.platform.store.failures import sqlite_file_unusable, store_timed_out, store_unavailable
from gateway.platform.store.writer_lock import _SQLITE_WRITERS, SqliteWriterLock, WriterLockTimeout, write_transaction

if TYPE_CHECKING:
    from gateway.platform.store.group_commit import GroupCommit

__all__ = [
    "make_engine",
    "make_sessionmaker",
    "migrate",
    "write_transaction",
    "group_commit",
    "one_read",
    "store_unavailable",
    "store_timed_out",
    "sqlite_file_unusable",
    "SqliteWriterLock",
    "WriterLockTimeout",
    "MIGRATIONS_DIR",
]

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def make_engine(url: str, statement_timeout_ms: int | None = None) -> Engine:
    """An engine for `url`. SQLite gets WAL, durable commits, a busy timeout and foreign keys; PostgreSQL a pool,
    custom plans for prepared statements (PLAN_CACHE_MODE) and, when given, a statement timeout (so
    no request can hold a connection or a lock for ever).

    `statement_timeout_ms` (the server's `IAP_DB_STATEMENT_TIMEOUT_MS`; 0 = no limit): on PostgreSQL the
    `statement_timeout`; on SQLite how long a write waits for the file's writer lock (`SqliteWriterLock`: another
    thread's or process's write) and how long a statement waits for a lock another process holds on the file
    (a backup, a second tool) before it fails with "database is locked". None (the CLI): none on PostgreSQL,
    30 s on SQLite.

    Both hide statements' parameters from SQLAlchemy's errors (`hide_parameters`): a failed INSERT's message would
    otherwise carry its values (an NHS number, a name, a raw message) into every traceback that reaches a log.
    """
    url = normalise_database_url(url)  # DatabaseUrlInvalid for a URL no retry will fix (gateway.platform.store.database_url)
    if url.startswith("sqlite"):
        busy = _SQLITE_DEFAULT_BUSY if statement_timeout_ms is None else (statement_timeout_ms / 1000 or _SQLITE_NO_LIMIT)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": busy}, hide_parameters=True)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # FULL: each commit is on disk before it returns, so an acknowledged message survives a power cut too
            # (in WAL mode NORMAL survives a crash of the process, not of the machine). Costs one fsync per commit.
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        database = engine.url.database
        in_memory = not database or database == ":memory:" or database.startswith("file::memory:") or "mode=memory" in url
        writer = None if in_memory or database is None else database + "-writer.lock"
        _SQLITE_WRITERS[engine] = SqliteWriterLock(writer, None if busy == _SQLITE_NO_LIMIT else busy)
        return engine
    options = [f"-c plan_cache_mode={PLAN_CACHE_MODE}"]
    if statement_timeout_ms:
        options.append(f"-c statement_timeout={statement_timeout_ms}")
    engine = create_engine(url, pool_size=10, max_overflow=20, connect_args={"options": " ".join(options)}, hide_parameters=True)
    _ping_when_idle(engine)
    send_deferred_writes_together(engine)
    return engine


_SQLITE_DEFAULT_BUSY = 30.0  # seconds a statement waits for another process's lock on a SQLite file, unless told
_SQLITE_NO_LIMIT = (2**31 - 1) / 1000  # seconds: the longest busy timeout SQLite takes (its milliseconds are a C int)


# How PostgreSQL plans the statements psycopg prepares (after 5 runs on a connection): each run is planned for its own
# values and the table as it is now. With PostgreSQL's default ("auto") a connection may keep, for its whole life, a
# generic plan made while the tables were small: a gateway started on a new database locked a referral's rows by
# reading every resource of the types asked for (a type index, the ids as a filter), 30-36 ms per referral at about
# 50,000 resources and growing with the store, until an ANALYZE (autovacuum) replanned it (bench/README.md, twelfth
# round). Planning these short statements each time costs far less than that risk.
PLAN_CACHE_MODE = "force_custom_plan"

# A pooled connection idle for longer than this is pinged before use (and replaced if the ping fails).
PING_AFTER_IDLE_SECONDS = 1.0


def _ping_when_idle(engine: Engine) -> None:
    """SQLAlchemy's "pessimistic" disconnect check, made only where it can help: a connection that sat in the pool
    for over PING_AFTER_IDLE_SECONDS (the server may have restarted or a firewall dropped it meanwhile) is pinged
    on checkout and, if the ping fails, replaced. `pool_pre_ping` pinged on every checkout: a round trip per
    checkout, three per ingested message (~10% of its CPU, bench/README.md). A connection used a moment ago is
    not pinged: if the server went away within that moment, its first statement fails, SQLAlchemy invalidates the
    pool, and the message's transaction is retried (`gateway.platform.messages.ATTEMPTS`) on a new connection.
    """

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection, record):  # type: ignore[no-untyped-def]
        record.info["iap_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection, record, _proxy):  # type: ignore[no-untyped-def]
        since = record.info.pop("iap_idle_since", None)
        if since is None or time.monotonic() - since < PING_AFTER_IDLE_SECONDS:
            return  # just connected, or in use a moment ago
        try:
            engine.dialect.do_ping(dbapi_connection)  # the dialect's own ping (in autocommit: no transaction left open)
        except Exception as exc:  # the pool discards this connection and checks out another
            raise DisconnectionError(f"pooled connection failed its ping after idling: {type(exc).__name__}") from exc


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions for `engine`; every transaction that writes resources commits its AuditEvent with it (gateway.platform.audit).
    On a SQLite file, messages' transactions are committed in groups (`group_commit`)."""
    from gateway.platform.audit import close_work, install_audit_hooks
    from gateway.platform.metrics import STORE_COMMIT_MESSAGES
    from gateway.platform.store.group_commit import GroupCommit

    sessions = sessionmaker(engine, expire_on_commit=False)
    install_audit_hooks(sessions)
    if engine in _SQLITE_WRITERS:
        _GROUPS[sessions] = GroupCommit(sessions, close_work, STORE_COMMIT_MESSAGES.observe)
    return sessions


_GROUPS: WeakKeyDictionary[sessionmaker[Session], GroupCommit] = WeakKeyDictionary()


def group_commit(sessions: sessionmaker[Session]) -> GroupCommit | None:
    """The group commit of `sessions` (a SQLite store: one writer, so waiting messages share a commit); None on
    PostgreSQL, whose writers do not wait for one another (each message commits on its own)."""
    return _GROUPS.get(sessions)


def alembic_config() -> Config:
    """The Alembic configuration of the gateway's migrations (no alembic.ini: the scripts are in the package)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision`, by default the newest (idempotent; the prestart step)."""
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


_AUTOCOMMIT: WeakKeyDictionary[Engine, Engine] = WeakKeyDictionary()


@contextmanager
def one_read(sessions: sessionmaker[Session]) -> Iterator[Connection]:
    """A Core connection for a read outside any transaction (per-request lookups: a credential, a re-sent message id).

    No Session and no ORM (a third of such a read's cost), and no transaction: PostgreSQL runs it in
    autocommit (no BEGIN and ROLLBACK round trips); SQLite's driver opens a transaction only to write.
    """
    engine = sessions.kw["bind"]
    if engine.dialect.name != "sqlite":
        engine = _AUTOCOMMIT.get(engine) or _AUTOCOMMIT.setdefault(engine, engine.execution_options(isolation_level="AUTOCOMMIT"))
    with engine.connect() as connection:
        yield connection
