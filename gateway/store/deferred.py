"""PostgreSQL: a transaction's writes that return nothing are sent together, with its COMMIT, in one round trip.

A message's transaction on PostgreSQL made nine round trips to the server (BEGIN, the locking read, four
inserts, the AuditEvent's two, COMMIT). Under load each one is a wait: for the server's process to be
scheduled, then for this thread to get the GIL back. The ingest slot the message holds waits with it, and
so do the messages queued for that slot (bench/README.md, tenth and eleventh rounds).

`defer(connection, statement, rows)` is for a write whose result nothing reads: an insert with no
RETURNING, or an update or delete whose row count is not checked. On PostgreSQL, inside a transaction,
it is kept. Just before the transaction's next statement, or at its commit, every kept write goes to the
server in one query string (one `Query` message of the simple protocol): the statements one after the
other, each row's values bound by psycopg on this side (its `ClientCursor`, the driver's own quoting), the
rows of one INSERT as one multi-row VALUES, and at the commit the COMMIT itself last in the same string.
The server runs them in order and stops at the first that fails (the rest, the COMMIT with them, are not
run). Elsewhere (SQLite, another driver, or a connection in autocommit) a write runs at once, as before.

What stays the same:
- the order of statements: every kept write reaches the server before any later statement of its
  transaction, so every read in the transaction sees it, and the commit includes it;
- the errors: a kept write that fails raises the same SQLAlchemy exception (an `IntegrityError` for a
  duplicate key, say), and its transaction fails and is rolled back as it would have been.

What changes is where the error is raised: at the transaction's next statement or at its commit, not at
the `defer` call. So a write may be deferred only where no caller catches that write's own error. Every
caller of `defer` lets such an error fail the whole transaction (`gateway.messages.commit_message`
retries or answers a lost race at the level of the transaction).

Nothing kept outlives its transaction: a rollback drops it, and so do the start of the next transaction
and the connection's return to the pool.

Why not psycopg's pipeline mode (the tenth round's way): its `executemany` flushes each row to the socket
as it goes, so the server's process woke once per row, and each row passed through SQLAlchemy and psycopg's
per-statement machinery. One string per transaction cost 5–15% less CPU per message and one round trip fewer
(bench/README.md, eleventh round).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from weakref import WeakKeyDictionary, WeakSet

import psycopg
from sqlalchemy import ClauseElement, Connection, Engine, Executable, Insert, event
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.compiler import SQLCompiler

__all__ = ["defer", "send_deferred_writes_together"]

_KEPT = "iap_deferred_writes"  # the DBAPI connection's info: [(statement, rows)] kept in the current transaction
_KEEPING: WeakSet[Dialect] = WeakSet()  # the dialects of the engines set up here (an engine and its option engines share one)
_INLINE: WeakKeyDictionary[Insert, Insert] = WeakKeyDictionary()  # each INSERT given, made once with no RETURNING


def send_deferred_writes_together(engine: Engine) -> None:
    """Set up `engine` so that `defer` keeps writes and sends them together: PostgreSQL through psycopg (the driver
    the gateway installs and picks for `postgresql://`). With any other driver, `defer` writes at once."""
    if engine.dialect.name != "postgresql" or engine.dialect.driver != "psycopg":
        return
    event.listen(engine, "begin", _drop)
    event.listen(engine, "rollback", _drop)
    event.listen(engine, "checkin", lambda _dbapi, record: record.info.pop(_KEPT, None))
    event.listen(engine, "before_execute", _send_before_statement)
    event.listen(engine, "commit", _send_with_commit)
    _KEEPING.add(engine.dialect)


def defer(connection: Connection, statement: Executable, rows: Sequence[dict[str, Any]]) -> None:
    """Run `statement` once per row of `rows`: now, or (PostgreSQL, in a transaction) together with the transaction's
    other deferred writes just before its next statement or its COMMIT.

    `statement` returns nothing that is read: an INSERT is sent `inline`, with no RETURNING of a generated key (a
    kept write has no reply to read). Its parameters are plain bind parameters, named as the keys of `rows` (an
    INSERT's columns, or `bindparam` names). Build the statement once, not per call: what it renders to is kept
    per statement.
    """
    if not rows:
        return
    if isinstance(statement, Insert):
        inline = _INLINE.get(statement)
        if inline is None:
            inline = _INLINE[statement] = statement.inline()
        statement = inline
    if connection.dialect not in _KEEPING or connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
        connection.execute(statement, list(rows))
        return
    connection.info.setdefault(_KEPT, []).append((statement, list(rows)))


def _drop(connection: Connection) -> None:
    if not connection.invalidated:  # an invalidated connection has lost its DBAPI connection (and what was kept on it)
        connection.info.pop(_KEPT, None)


def _send_before_statement(connection: Connection, *_args: Any) -> None:
    if connection.info.get(_KEPT):
        _send(connection, commit=False)


def _send_with_commit(connection: Connection) -> None:
    """The `commit` event, just before SQLAlchemy asks psycopg to commit: the kept writes and the COMMIT go in one
    string, and psycopg, finding no transaction open, sends no COMMIT of its own."""
    _send(connection, commit=True)


def _send(connection: Connection, commit: bool) -> None:
    """The kept writes, in the order they were kept, in one query string (and the COMMIT last when `commit`, if
    anything was kept; otherwise the commit goes as usual): one round trip, one wait."""
    kept = connection.info.pop(_KEPT, None)  # popped first: a failure below must not leave them to be sent again
    if not kept:
        return
    driver = connection.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    binder = psycopg.ClientCursor(driver)
    try:
        statements: list[str] = []
        for statement, rows in kept:
            previous: tuple[str, ...] | None = None
            for row in rows:
                keys = tuple(row)
                head, template, processors = _rendered(connection.dialect, statement, keys)
                values = binder.mogrify(template, {k: processors[k](v) if k in processors else v for k, v in row.items()})
                if head and keys == previous:  # the next row of the same INSERT: one more VALUES tuple
                    statements[-1] += ", " + values
                else:
                    statements.append(head + values)
                previous = keys
        if commit:
            statements.append("COMMIT")
        binder.execute("; ".join(statements))
    except psycopg.Error as exc:  # as SQLAlchemy raises a driver's error elsewhere (IntegrityError for a duplicate key...)
        raise DBAPIError.instance(None, None, exc, psycopg.Error, dialect=connection.dialect) from exc
    finally:
        binder.close()


Processor = Callable[[Any], Any]  # a bind processor: a value as the driver is given it

# (dialect, statement, the rows' keys) -> (INSERT head or "", the statement or its VALUES tuple with %(key)s, processors)
_RENDERED: WeakKeyDictionary[Dialect, dict[tuple[Executable, tuple[str, ...]], tuple[str, str, dict[str, Processor]]]]
_RENDERED = WeakKeyDictionary()


def _rendered(dialect: Dialect, statement: Executable, keys: tuple[str, ...]) -> tuple[str, str, dict[str, Processor]]:
    """`statement` compiled for rows with `keys`, once per dialect: its SQL with psycopg's `%(key)s` placeholders,
    split before the VALUES tuple for an INSERT, and the bind processors of its typed parameters (a `UTCDateTime`)."""
    per_dialect = _RENDERED.setdefault(dialect, {})
    done = per_dialect.get((statement, keys))
    if done is None:
        assert isinstance(statement, ClauseElement)
        compiled = statement.compile(dialect=dialect, column_keys=list(keys))
        assert isinstance(compiled, SQLCompiler)
        unknown = set(compiled.binds) - set(keys)
        if unknown:
            raise ValueError(f"a kept write's rows have no value for {sorted(unknown)}")
        processors: dict[str, Processor] = {}
        for name, bind in compiled.binds.items():
            if (process := bind.type.bind_processor(dialect)) is not None:
                processors[name] = process
        head, template = "", compiled.string
        before, values, after = compiled.string.partition(" VALUES ")
        if isinstance(statement, Insert) and values and " ON CONFLICT " not in after and " RETURNING " not in after:
            head, template = before + values, after  # a plain INSERT: its rows' VALUES tuples can follow one another
        done = per_dialect[(statement, keys)] = (head, template, processors)
    return done
