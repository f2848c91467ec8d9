"""Engine, sessions and migrations."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from gateway.store.deferred import send_deferred_writes_together

if TYPE_CHECKING:
    from gateway.store.group_commit import GroupCommit

__all__ = [
    "make_engine",
    "make_sessionmaker",
    "migrate",
    "write_transaction",
    "group_commit",
    "one_read",
    "store_unavailable",
    "store_timed_out",
    "WriterLockTimeout",
    "MIGRATIONS_DIR",
]

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


class WriterLockTimeout(OperationalError):
    """A write waited longer than the store allows (`IAP_DB_STATEMENT_TIMEOUT_MS`) for a SQLite file's writer lock:
    another thread or process wrote, or held the lock, all that time (a CLI command suspended with Ctrl-Z, say).
    An OperationalError, so it is answered like any other wait that ran out (`store_unavailable`: HTTP 503, AR)."""

    def __init__(self, path: str | None, seconds: float | None) -> None:
        where = f"the writer lock {path}" if path else "the writer lock"
        waited = "" if seconds is None else f" {seconds:g} s"
        super().__init__(None, None, TimeoutError(f"waited{waited} for {where}; another writer held it all that time"))


class SqliteWriterLock:
    """One writing transaction at a time on a SQLite file, across the threads of a process and the processes
    of a host (`serve --workers N`, the CLI): a thread lock, then an exclusive `flock` on `<db>-writer.lock`.

    SQLite has one writer. Without this, writers that meet its lock sleep in its busy handler (1, 2, 5,
    10, ... 100 ms steps) and some waited seconds under load (bench/README.md); here they queue in the
    kernel and start as soon as the writer before them commits. Re-entrant within a thread. A store with
    no file (in-memory) needs only the thread lock.

    `timeout` (seconds; None = no limit): how long a write waits for both, after which it fails with
    `WriterLockTimeout`. Without it, a process holding the file's lock (a CLI command suspended with Ctrl-Z) held
    every writer of the gateway (its ingest, MLLP, safety-call ticks) for as long as it lasted.
    """

    def __init__(self, path: str | None, timeout: float | None) -> None:
        self._thread = threading.RLock()
        self._path = path
        self._timeout = timeout
        self._file: _FileLock | None = None
        self._depth = 0

    def __enter__(self) -> None:
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        if not self._thread.acquire(timeout=-1 if self._timeout is None else self._timeout):
            raise WriterLockTimeout(self._path, self._timeout)
        self._depth += 1
        if self._depth == 1 and self._path is not None:
            try:
                self._file_lock().acquire(deadline)
            except BaseException:
                self._depth -= 1
                self._thread.release()
                raise

    def __exit__(self, *_exc: object) -> None:
        try:
            if self._depth == 1 and self._file is not None:
                self._file.release()
        finally:
            self._depth -= 1
            self._thread.release()

    def _file_lock(self) -> _FileLock:
        if self._file is None or self._file.pid != os.getpid():  # a forked child opens its own (flock belongs to the open file)
            self._file = _FileLock(self._path or "", self._timeout)
        return self._file


class _FileLock:
    """The exclusive `flock` on a file, waited for until a deadline.

    flock has no timed wait, and trying it again and again (LOCK_NB) loses to a busy process that takes it back the
    moment it lets it go (the worker processes of `serve --workers N` share the file). So the wait is the kernel's,
    in a thread of this lock's own (the waiter), and a writer waits for the waiter's word until its deadline. A writer
    that gives up leaves the waiter waiting; the next writer of this process takes that wait over, and if none has
    come by the time the waiter gets the lock, the waiter lets it go at once. Only a lock found taken needs the waiter.
    """

    FREE, WANTED, ABANDONED, HELD = range(4)
    WAITER_IDLE_SECONDS = 5.0  # a waiter with nothing to do for this long ends (the next wait starts another)

    def __init__(self, path: str, timeout: float | None) -> None:
        self.pid = os.getpid()
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        weakref.finalize(self, os.close, self._fd)  # closed with the engine's lock
        self._path, self._timeout = path, timeout
        self._state = self.FREE
        self._waiter: threading.Thread | None = None
        self._changed = threading.Condition()

    def acquire(self, deadline: float | None) -> None:
        with self._changed:
            if self._state == self.FREE:  # not FREE: ABANDONED, the waiter still waiting for it
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    self._state = self.HELD
                    return
                except BlockingIOError:
                    pass
            self._state = self.WANTED
            if self._waiter is None:
                self._waiter = threading.Thread(target=self._wait, name="iap-sqlite-writer-lock", daemon=True)
                self._waiter.start()
            self._changed.notify_all()
            try:
                while self._state != self.HELD:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise WriterLockTimeout(self._path, self._timeout)
                    self._changed.wait(left)
            except BaseException:  # out of time, or interrupted: the waiter lets the lock go when it gets it
                self._state = self.ABANDONED
                raise

    def release(self) -> None:
        with self._changed:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._state = self.FREE

    def _wait(self) -> None:
        """The waiter: takes the file's lock in the kernel's queue whenever a writer wants it."""
        while True:
            with self._changed:
                if not self._changed.wait_for(lambda: self._state == self.WANTED, self.WAITER_IDLE_SECONDS):
                    if self._state == self.ABANDONED:  # given up before this thread began to wait for it
                        self._state = self.FREE
                    self._waiter = None
                    return
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            with self._changed:
                if self._state == self.WANTED:
                    self._state = self.HELD
                    self._changed.notify_all()
                else:  # ABANDONED: the writer gave up and no other has come
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
                    self._state = self.FREE


_SQLITE_WRITERS: WeakKeyDictionary[Engine, SqliteWriterLock] = WeakKeyDictionary()


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
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    options = [f"-c plan_cache_mode={PLAN_CACHE_MODE}"]
    if statement_timeout_ms:
        options.append(f"-c statement_timeout={statement_timeout_ms}")
    engine = create_engine(url, pool_size=10, max_overflow=20, connect_args={"options": " ".join(options)}, hide_parameters=True)
    _ping_when_idle(engine)
    send_deferred_writes_together(engine)
    return engine


_SQLITE_DEFAULT_BUSY = 30.0  # seconds a statement waits for another process's lock on a SQLite file, unless told
_SQLITE_NO_LIMIT = (2**31 - 1) / 1000  # seconds: the longest busy timeout SQLite takes (its milliseconds are a C int)


def store_unavailable(error: BaseException) -> bool:
    """`error` says the store could not do the work just now, not that the work or the input was wrong: the database
    could not be reached or went away (a restart, a network fault, no connections left), a statement ran out of time
    or waited too long for a lock, PostgreSQL gave up on a deadlock or a serialization conflict, or the pool had no
    connection to give. A sender told so sends again later (HTTP 503 with Retry-After, gateway.api.responses); a
    message that was taken meanwhile is answered as a re-send, never stored twice.
    """
    if isinstance(error, OperationalError | PoolTimeout):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated


def store_timed_out(error: BaseException) -> bool:
    """`error` is a wait that ran its whole time: for the SQLite file's writer (`WriterLockTimeout`) or its lock
    (SQLITE_BUSY, after the busy timeout), for a PostgreSQL statement (`statement_timeout`: 57014) or lock (55P03),
    or for a pooled connection. Trying the same work again at once would wait as long again, so it is not retried
    (gateway.messages): the sender is answered now (503, AR) and sends again later. A deadlock, a serialization
    conflict or a lost connection fail fast and are retried."""
    if isinstance(error, WriterLockTimeout | PoolTimeout):
        return True
    code = _sqlite_result(error)
    if code is not None:
        return code == sqlite3.SQLITE_BUSY
    return getattr(getattr(error, "orig", None), "sqlstate", None) in _PG_TIMED_OUT


_PG_TIMED_OUT = frozenset({"57014", "55P03"})  # query_canceled (statement_timeout), lock_not_available


def sqlite_file_unusable(error: BaseException) -> bool:
    """`error` says the SQLite file that DATABASE_URL names cannot be used at all, whatever the time: it cannot be
    opened or made (SQLITE_CANTOPEN: its folder does not exist, or may not be written) or it is not a SQLite database
    (SQLITE_NOTADB). Sending or running the same thing again would fail the same way: the setting is wrong, not the
    store's state (the CLI's exit 78, EX_CONFIG). A PostgreSQL server's refusal (no such database or role, a wrong
    password) is not told apart here: psycopg gives a connection's failure no SQLSTATE, only the server's words."""
    return _sqlite_result(error) in _SQLITE_UNUSABLE


_SQLITE_UNUSABLE = frozenset({sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_NOTADB})


def _sqlite_result(error: BaseException) -> int | None:
    """SQLite's primary result code for the driver error under `error` (SQLITE_BUSY, ...); None if not SQLite's.
    Its extended codes (SQLITE_BUSY_SNAPSHOT, ...) share the primary code's low byte."""
    orig = getattr(error, "orig", None)
    return (getattr(orig, "sqlite_errorcode", 0) & 0xFF) if isinstance(orig, sqlite3.Error) else None


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
    pool, and the message's transaction is retried (`gateway.messages.ATTEMPTS`) on a new connection.
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
    """Sessions for `engine`; every transaction that writes resources commits its AuditEvent with it (gateway.audit).
    On a SQLite file, messages' transactions are committed in groups (`group_commit`)."""
    from gateway.audit import close_work, install_audit_hooks
    from gateway.metrics import STORE_COMMIT_MESSAGES
    from gateway.store.group_commit import GroupCommit

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


@contextmanager
def write_transaction(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """`sessions.begin()` for a transaction that writes; on SQLite, one such transaction at a time on the file
    (`SqliteWriterLock`: threads and worker processes queue for it). PostgreSQL: no lock."""
    engine = sessions.kw.get("bind")
    lock = _SQLITE_WRITERS.get(engine) if isinstance(engine, Engine) else None
    with lock or nullcontext(), sessions.begin() as session:
        yield session


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
