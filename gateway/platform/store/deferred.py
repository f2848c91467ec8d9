"""PostgreSQL: a transaction's writes that return nothing are sent together, with its COMMIT, in one round trip.

A message's transaction on PostgreSQL made nine round trips to the server (BEGIN, the locking read, four
inserts, the AuditEvent's two, COMMIT). Under load each one is a wait: for the server's process to be
scheduled, then for this thread to get the GIL back. The ingest slot the message holds waits with it, and
so do the messages queued for that slot (bench/README.md, tenth and eleventh rounds).

`defer(connection, statement, rows)` is for a write whose result nothing reads: an insert with no
RETURNING, or an update or delete whose row count is not checked. On PostgreSQL, inside a transaction,
it is kept. Just before the transaction's next statement, or at its commit, every kept write is sent in
one psycopg pipeline (every statement sent, then one wait for all the replies): the rows of one INSERT as
one multi-row INSERT, their values as bound parameters (psycopg prepares a statement it sees often), and at
the commit the COMMIT itself last in the same pipeline. The server runs them in order; once one fails, the
rest (the COMMIT with them) are not run. Elsewhere (SQLite, another driver, or a connection in
autocommit) a write runs at once; on SQLite straight through its driver, compiled once (the end of this module).

What stays the same:
- the order of statements: every kept write reaches the server before any later statement of its
  transaction, so every read in the transaction sees it, and the commit includes it;
- the errors: a kept write that fails raises the same SQLAlchemy exception (an `IntegrityError` for a
  duplicate key, say), and its transaction fails and is rolled back as it would have been.

What changes is where the error is raised: at the transaction's next statement or at its commit, not at
the `defer` call. So a write may be deferred only where no caller catches that write's own error. Every
caller of `defer` lets such an error fail the whole transaction (`gateway.platform.messages.commit_message`
retries or answers a lost race at the level of the transaction).

Nothing kept outlives its transaction: a rollback drops it, and so do the start of the next transaction
and the connection's return to the pool.

Why one multi-row INSERT per table (eleventh round): psycopg's `executemany` in a pipeline sends each row
to the socket as it goes, so the server's process woke once per row, and each row went through SQLAlchemy's
and psycopg's per-statement work. Why bound parameters, not values rendered into one SQL string (tried the
same round): the string saved the same CPU here, but the server parsed and planned it anew every time, and
cost more CPU there.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterator, Sequence
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
        if connection.dialect.name == "sqlite" and connection.dialect.driver == "pysqlite":
            _run_on_sqlite(connection, statement, rows)
        else:
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
    pipeline, and psycopg, finding no transaction open, then sends no COMMIT of its own."""
    _send(connection, commit=True)


def _send(connection: Connection, commit: bool) -> None:
    """The kept writes, in the order they were kept, in one pipeline (and the COMMIT last when `commit`, if anything
    was kept; otherwise the commit goes as usual): one round trip, one wait."""
    kept = connection.info.pop(_KEPT, None)  # popped first: a failure below must not leave them to be sent again
    if not kept:
        return
    driver = connection.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    try:
        with driver.pipeline(), psycopg.RawCursor(driver) as cursor:  # RawCursor: the SQL has $n placeholders already
            for statement, rows in kept:
                for sql, params in _statements(connection.dialect, statement, rows):
                    cursor.execute(sql, params)
            if commit:
                cursor.execute(b"COMMIT")
    except psycopg.Error as exc:  # as SQLAlchemy raises a driver's error elsewhere (IntegrityError for a duplicate key...)
        raise DBAPIError.instance(None, None, exc, psycopg.Error, dialect=connection.dialect) from exc


def _statements(dialect: Dialect, statement: Executable, rows: list[dict[str, Any]]) -> Iterator[tuple[bytes, list[Any]]]:
    """`statement` run for `rows`, as (SQL, positional parameters): an INSERT's rows with the same keys in a row as one
    multi-row INSERT (up to `_MOST_ROWS`, and never past PostgreSQL's 65,535 parameters); anything else, once per row."""
    start = 0
    while start < len(rows):
        keys = tuple(rows[start])
        rendered = _rendered(dialect, statement, keys)
        names, processors = rendered.names, rendered.processors
        most = min(_MOST_ROWS, _MOST_PARAMETERS // max(1, len(names))) if rendered.multirow else 1
        end = _same_keys(rows, start, most)
        group = rows[start:end]
        params = [processors[name](row[name]) if name in processors else row[name] for row in group for name in names]
        yield rendered.sql(len(group)), params
        start = end


def _same_keys(rows: Sequence[dict[str, Any]], start: int, most: int) -> int:
    """The end of the run of rows from `start` with the same keys as `rows[start]` (at most `most` of them)."""
    keys, end = tuple(rows[start]), start + 1
    while end < len(rows) and end - start < most and tuple(rows[end]) == keys:
        end += 1
    return end


def _check_names(names: Sequence[str], keys: tuple[str, ...]) -> None:
    """Every parameter of a kept write's statement has a value in its rows."""
    unknown = set(names) - set(keys)
    if unknown:
        raise ValueError(f"a kept write's rows have no value for {sorted(unknown)}")


Processor = Callable[[Any], Any]  # a bind processor: a value as the driver is given it
_MOST_ROWS = 500  # rows in one multi-row INSERT
_MOST_PARAMETERS = 65_535  # the most one statement may have (the protocol counts them in 16 bits)


class _Rendered:
    """A statement as PostgreSQL's own SQL for rows with given keys: `$1, $2, ...` placeholders, numbered on across the
    rows of a multi-row INSERT. Sent with psycopg's `RawCursor`, which passes the SQL as it is: psycopg's `%s`
    conversion parses a statement's text every time once it has more than 50 parameters (a multi-row INSERT does),
    and that parse was a twentieth of a worker's Python time (bench/README.md, twelfth round)."""

    __slots__ = ("head", "row", "names", "processors", "multirow", "_made")

    def __init__(self, head: str, row: list[str], names: list[str], processors: dict[str, Processor], multirow: bool) -> None:
        self.head, self.row, self.names, self.processors, self.multirow = head, row, names, processors, multirow
        self._made: dict[int, bytes] = {}  # rows -> the SQL

    def sql(self, rows: int) -> bytes:
        made = self._made.get(rows)
        if made is None:
            width, row = len(self.names), self.row
            tuples = (row[0] + "".join(f"${r * width + i + 1}{row[i + 1]}" for i in range(width)) for r in range(rows))
            made = self._made[rows] = (self.head + ", ".join(tuples)).encode()
        return made


_RENDERED: WeakKeyDictionary[Dialect, dict[tuple[Executable, tuple[str, ...]], _Rendered]] = WeakKeyDictionary()
_PLACEHOLDER = re.compile(r"%%|%\(([^)]+)\)s")  # the psycopg dialect's SQL: a named placeholder, or an escaped %


def _pieces(sql: str) -> tuple[list[str], list[str]]:
    """The text around each named placeholder of `sql` (one more piece than placeholders, `%%` made `%` again), and the
    placeholders' names in order."""
    pieces, names, text, at = [], [], "", 0
    for found in _PLACEHOLDER.finditer(sql):
        text += sql[at : found.start()]
        if found.group(1) is None:
            text += "%"
        else:
            pieces.append(text)
            names.append(found.group(1))
            text = ""
        at = found.end()
    pieces.append(text + sql[at:])
    return pieces, names


def _processors(dialect: Dialect, compiled: SQLCompiler) -> dict[str, Processor]:
    """The bind processors of `compiled`'s typed parameters (a `UTCDateTime`), by parameter name: each type's as the
    dialect has it (`dialect_impl`), as SQLAlchemy applies them (on SQLite a datetime is written as its text)."""
    processors: dict[str, Processor] = {}
    for name, bind in compiled.binds.items():
        if (process := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None:
            processors[name] = process
    return processors


def _compiled(dialect: Dialect, statement: Executable, keys: tuple[str, ...]) -> SQLCompiler:
    assert isinstance(statement, ClauseElement)
    compiled = statement.compile(dialect=dialect, column_keys=list(keys))
    assert isinstance(compiled, SQLCompiler)
    return compiled


def _rendered(dialect: Dialect, statement: Executable, keys: tuple[str, ...]) -> _Rendered:
    """`statement` compiled for rows with `keys`, once per dialect: its SQL split before the VALUES tuple for a plain
    INSERT (whose rows' tuples can follow one another), the name of each placeholder in order, and the bind processors
    of its typed parameters (a `UTCDateTime`)."""
    per_dialect = _RENDERED.setdefault(dialect, {})
    done = per_dialect.get((statement, keys))
    if done is None:
        compiled = _compiled(dialect, statement, keys)
        processors = _processors(dialect, compiled)
        head, each = "", compiled.string
        before, values, after = each.partition(" VALUES ")
        multirow = isinstance(statement, Insert) and bool(values) and " ON CONFLICT " not in after and " RETURNING " not in after
        if multirow:
            head, each = before + values, after
        (head, *_), before_values = _pieces(head)
        if before_values:
            raise ValueError(f"a kept write has parameters before its VALUES: {before_values}")
        row, names = _pieces(each)
        _check_names(names, keys)
        done = per_dialect[(statement, keys)] = _Rendered(head, row, names, processors, multirow)
    return done


# --- SQLite: run at once, through the driver --------------------------------------------------------------------------
# SQLite has no round trips to save, but SQLAlchemy's own work per statement (its compiled-statement cache, each row's
# parameters through the execution context, a result object) was most of these writes' cost: a referral's five took
# about a ninth of a worker's Python time, 1-2% of it in the driver (bench/README.md, fourteenth round). The statement
# is compiled once per set of keys, as for PostgreSQL, and its rows given to sqlite3's executemany, in the same
# transaction on the same connection: the same SQL, the same values after the same bind processors (each type's as
# the dialect has it), the same errors (as SQLAlchemy raises them).

_SQLITE: WeakKeyDictionary[Dialect, dict[tuple[Executable, tuple[str, ...]], tuple[str, tuple[str, ...], dict[str, Processor]]]] = (
    WeakKeyDictionary()
)


def _run_on_sqlite(connection: Connection, statement: Executable, rows: Sequence[dict[str, Any]]) -> None:
    start = 0
    while start < len(rows):  # rows with the same keys in one executemany (an INSERT's columns are its first row's keys)
        keys = tuple(rows[start])
        end = _same_keys(rows, start, len(rows))
        sql, names, processors = _sqlite_statement(connection.dialect, statement, keys)
        params = [tuple(processors[name](row[name]) if name in processors else row[name] for name in names) for row in rows[start:end]]
        cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.executemany(sql, params)
        except sqlite3.Error as exc:  # as SQLAlchemy raises it (IntegrityError for a duplicate key, ...), values hidden as it hides them
            raise DBAPIError.instance(
                sql, params, exc, sqlite3.Error, hide_parameters=connection.engine.hide_parameters, dialect=connection.dialect
            ) from exc
        finally:
            cursor.close()
        start = end


def _sqlite_statement(dialect: Dialect, statement: Executable, keys: tuple[str, ...]) -> tuple[str, tuple[str, ...], dict[str, Processor]]:
    """`statement` compiled for rows with `keys`: its SQL (`?` placeholders), the parameters' names in order, and the
    bind processors of its typed parameters."""
    per_dialect = _SQLITE.setdefault(dialect, {})
    done = per_dialect.get((statement, keys))
    if done is None:
        compiled = _compiled(dialect, statement, keys)
        names = tuple(compiled.positiontup or ())
        _check_names(names, keys)
        done = per_dialect[(statement, keys)] = (compiled.string, names, _processors(dialect, compiled))
    return done
