"""What a database error means: the store unavailable just now, a wait that ran out, a SQLite file unusable."""

from __future__ import annotations

import sqlite3

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from gateway.platform.store.writer_lock import WriterLockTimeout


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
    (gateway.platform.messages): the sender is answered now (503, AR) and sends again later. A deadlock, a serialization
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
