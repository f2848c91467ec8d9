"""PostgreSQL: a transaction's writes that return nothing are sent together, in one round trip.

A message's transaction on PostgreSQL made nine round trips to the server (BEGIN, the locking read, four
inserts, the AuditEvent's two, COMMIT). Under load each one is a wait: for the server's process to be
scheduled, then for this thread to get the GIL back. The ingest slot the message holds waits with it, and
so do the messages queued for that slot (bench/README.md, tenth round).

`defer(connection, statement, rows)` is for a write whose result nothing reads: an insert with no
RETURNING, or an update or delete whose row count is not checked. On PostgreSQL, inside a transaction,
it is kept and sent with the other kept writes in one pipeline (psycopg's pipeline mode: every
statement sent, then one wait for all the replies) just before the transaction's next statement or just
before its COMMIT. Elsewhere (SQLite, or a connection in autocommit) it runs at once, as before.

What stays the same:
- the order of statements: every kept write reaches the server before any later statement of its
  transaction, so every read in the transaction sees it, and the commit includes it;
- the errors: a kept write that fails raises the same SQLAlchemy exception (an `IntegrityError` for a
  duplicate key, say), and its transaction fails as it would have.

What changes is where the error is raised: at the transaction's next statement or at its commit, not at
the `defer` call. So a write may be deferred only where no caller catches that write's own error. Every
caller of `defer` lets such an error fail the whole transaction (`gateway.messages.commit_message`
retries or answers a lost race at the level of the transaction).

Nothing kept outlives its transaction: a rollback drops it, and so do the start of the next transaction
and the connection's return to the pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from weakref import WeakKeyDictionary, WeakSet

import psycopg
from sqlalchemy import Connection, Engine, Executable, Insert, event
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.exc import DBAPIError

__all__ = ["defer", "send_deferred_writes_together"]

_KEPT = "iap_deferred_writes"  # the DBAPI connection's info: [(statement, rows)] kept in the current transaction
_PIPELINED: WeakSet[Dialect] = WeakSet()  # the dialects of the engines set up here (an engine and its option engines share one)
_INLINE: WeakKeyDictionary[Insert, Insert] = WeakKeyDictionary()  # each INSERT given, made once with no RETURNING


def send_deferred_writes_together(engine: Engine) -> None:
    """Set up `engine` so that `defer` keeps writes and sends them in one pipeline: PostgreSQL through psycopg (the
    driver the gateway installs and picks for `postgresql://`). With any other driver, `defer` writes at once."""
    if engine.dialect.name != "postgresql" or engine.dialect.driver != "psycopg":
        return
    event.listen(engine, "begin", _drop)
    event.listen(engine, "rollback", _drop)
    event.listen(engine, "checkin", lambda _dbapi, record: record.info.pop(_KEPT, None))
    event.listen(engine, "before_execute", _send_before_statement)
    event.listen(engine, "commit", _send)
    _PIPELINED.add(engine.dialect)


def defer(connection: Connection, statement: Executable, rows: Sequence[dict[str, Any]]) -> None:
    """Run `statement` once per row of `rows`: now, or (PostgreSQL, in a transaction) together with the transaction's
    other deferred writes just before its next statement or its COMMIT.

    `statement` returns nothing that is read: an INSERT is sent `inline`, with no RETURNING of a generated key (in
    a pipeline there is no reply to read until it is synced). Build the statement once, not per call.
    """
    if not rows:
        return
    if isinstance(statement, Insert):
        inline = _INLINE.get(statement)
        if inline is None:
            inline = _INLINE[statement] = statement.inline()
        statement = inline
    if connection.dialect not in _PIPELINED or connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
        connection.execute(statement, list(rows))
        return
    connection.info.setdefault(_KEPT, []).append((statement, list(rows)))


def _drop(connection: Connection) -> None:
    if not connection.invalidated:  # an invalidated connection has lost its DBAPI connection (and what was kept on it)
        connection.info.pop(_KEPT, None)


def _send_before_statement(connection: Connection, *_args: Any) -> None:
    if connection.info.get(_KEPT):
        _send(connection)


def _send(connection: Connection) -> None:
    """The kept writes, in the order they were kept, in one pipeline: sent together, then one wait for the replies."""
    kept = connection.info.pop(_KEPT, None)  # popped first: the statements below pass through `before_execute` too
    if not kept:
        return
    driver = connection.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    try:
        with driver.pipeline():
            for statement, rows in kept:
                connection.execute(statement, rows)  # several rows: psycopg's executemany, which rides this pipeline
    except psycopg.Error as exc:  # a failure the pipeline reported when it synced: as SQLAlchemy raises it elsewhere
        raise DBAPIError.instance(None, None, exc, psycopg.Error, dialect=connection.dialect) from exc
