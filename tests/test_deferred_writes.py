"""Writes kept for the commit (gateway.platform.store.deferred): fewer round trips to PostgreSQL, and nothing else changes."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from psycopg import pq
from sqlalchemy import bindparam, event, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from gateway.api.app import create_app
from gateway.platform.clock import FixedClock
from gateway.platform.store.db import write_transaction
from gateway.platform.store.deferred import defer
from gateway.platform.store.models import InboundMessage, ResourceRow
from gateway.platform.store.repo import find_by_identifier, get_resource, put_resources
from tests.conftest import NOW, add_test_client, bearer, empty_postgres, fixture_json, gateway_settings

NHS = "https://fhir.nhs.uk/Id/nhs-number"
_INSERT_INBOUND = insert(InboundMessage)  # built once, as defer() asks


def _patient(pid: str, nhs_number: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "identifier": [{"system": NHS, "value": nhs_number}]}


def _inbound(message_id: str) -> dict[str, Any]:
    return {
        "channel": "test",
        "message_id": message_id,
        "received_at": NOW,
        "raw": b"{}",
        "unused": "[]",
        "response_status": 201,
        "response_body": "{}",
    }


@contextmanager
def _protocol_trace(engine: Any) -> Iterator[list[list[str]]]:
    """The client/server messages of every pooled connection checked out meanwhile (libpq's trace), as exchanges: each
    ends when the server says it is ready for the next query, so each is one round trip."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trace")
        out = open(path, "w")  # noqa: SIM115 - held open for libpq while the block runs
        traced: list[Any] = []

        def _trace(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
            pgconn = dbapi_connection.pgconn
            pgconn.trace(out.fileno())
            pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
            traced.append(pgconn)

        exchanges: list[list[str]] = []
        event.listen(engine, "checkout", _trace)
        try:
            yield exchanges
        finally:
            event.remove(engine, "checkout", _trace)
            for pgconn in traced:
                pgconn.untrace()
            out.close()
        current: list[str] = []
        for line in Path(path).read_text().splitlines():
            current.append(line)
            if "\tReadyForQuery" in line:
                exchanges.append(current)
                current = []


def test_a_referrals_writes_reach_postgresql_together_with_its_commit(pg_url: str) -> None:
    """One flat NHS 111 case on PostgreSQL: six round trips (the credential, the re-send lookup, BEGIN, the locking
    read, the identifiers, then every other write and the COMMIT in one exchange). It was eleven, one per write,
    then seven with the COMMIT on its own."""
    empty_postgres(pg_url)
    app = create_app(gateway_settings(pg_url), FixedClock(NOW))
    try:
        key = add_test_client(app, {"ingest:nhs111"})
        with TestClient(app) as client, _protocol_trace(app.state.engine) as exchanges:
            reply = client.post("/ingest/nhs111", json=fixture_json("option2-standard.case.json"), headers=bearer(key))
        assert reply.status_code == 201, reply.text
    finally:
        app.state.engine.dispose()
    sent = ["\n".join(line for line in exchange if line.startswith("F\t")) for exchange in exchanges]
    assert len(sent) == 6, "\n---\n".join(sent)
    writes = sent[-1]
    for table in ("resources", "resource_tokens", "inbound_messages", "audit_events", "audit_entities"):
        assert writes.count(f"INSERT INTO {table} ") == 1  # each table's rows in one multi-row INSERT
    assert writes.count("\tSync") == 1  # one wait for all of them
    assert writes.index('"COMMIT"') > writes.rindex("INSERT INTO")  # the COMMIT last, in the same exchange
    assert "RETURNING" not in writes  # nothing in it is read back


def test_a_big_batchs_kept_rows_all_arrive(app: Any) -> None:
    """More rows than one multi-row INSERT takes (gateway.platform.store.deferred._MOST_ROWS): every one stored, on both stores."""
    patients = [(_patient(f"many-{n}", f"999{n:07d}"), None) for n in range(1234)]
    with write_transaction(app.state.sessions) as session:
        put_resources(session, patients, NOW)
    with app.state.sessions() as session:
        assert session.execute(select(func.count()).select_from(ResourceRow)).scalar_one() == 1234
        assert get_resource(session, "Patient", "many-1233") is not None


def test_kept_values_reach_the_store_as_they_were_given(app: Any) -> None:
    """Kept values arrive as they were given, on both stores (PostgreSQL's pipeline and SQLite's driver path):
    quotes, backslashes, placeholders, non-ASCII text, any bytes, a null; an aware datetime stays the same instant
    (the UTCDateTime column's own conversion still runs)."""
    awkward = "O'Brien \\ \\x41 \"quoted\" E'x' ; -- Ysbyty Gwynedd ñ 🙂 $$ $1 ? :x %(x)s %s %%"
    raw = bytes(range(256)) + b"\\x00'"
    later = datetime.fromisoformat("2026-06-01T10:30:00+01:00")  # BST: stored as the same instant
    with write_transaction(app.state.sessions) as session:
        row = _inbound("m-awkward") | {"raw": raw, "response_body": awkward, "received_at": later, "header_id": None}
        defer(session.connection(), _INSERT_INBOUND, [row])
        put_resources(session, [(_patient("awkward", "9990000034") | {"name": [{"text": awkward}]}, None)], NOW)
    with app.state.sessions() as session:
        # found by its time too: stored in the column's own form, so the store's comparisons and ordering hold
        found = select(InboundMessage).where(InboundMessage.message_id == "m-awkward", InboundMessage.received_at == later)
        stored = session.execute(found).scalar_one()
        assert (stored.raw, stored.response_body, stored.received_at, stored.header_id) == (raw, awkward, later, None)
        patient = get_resource(session, "Patient", "awkward")
        assert patient is not None and patient["name"] == [{"text": awkward}]


def test_a_write_kept_for_the_commit_is_seen_by_the_transactions_next_read(app: Any) -> None:
    """Reads in the transaction see its writes (the kept writes are sent before the read), on both stores."""
    with write_transaction(app.state.sessions) as session:
        put_resources(session, [(_patient("kept-1", "9990000018"), None)], NOW)
        assert get_resource(session, "Patient", "kept-1") is not None
        assert [p["id"] for p in find_by_identifier(session, "Patient", NHS, "9990000018")] == ["kept-1"]


def test_a_kept_write_that_fails_fails_its_commit_and_nothing_of_its_transaction_is_stored(app: Any) -> None:
    """A duplicate message id met at the commit, not at the insert: the same IntegrityError, and the whole transaction
    rolled back (a racing copy of a message is answered from this, gateway.platform.messages)."""
    with write_transaction(app.state.sessions) as session:
        defer(session.connection(), _INSERT_INBOUND, [_inbound("m-1")])
    with pytest.raises(IntegrityError), write_transaction(app.state.sessions) as session:
        put_resources(session, [(_patient("lost", "9990000026"), None)], NOW)
        defer(session.connection(), _INSERT_INBOUND, [_inbound("m-1")])
    with app.state.sessions() as session:
        assert get_resource(session, "Patient", "lost") is None
        assert session.execute(select(InboundMessage.message_id)).scalars().all() == ["m-1"]


def test_a_rolled_back_transactions_kept_writes_are_never_sent(app: Any) -> None:
    """Nothing kept outlives its transaction: the next transaction on the same pooled connection does not send it."""
    with pytest.raises(RuntimeError), write_transaction(app.state.sessions) as session:
        defer(session.connection(), _INSERT_INBOUND, [_inbound("rolled-back")])
        raise RuntimeError("the work failed")
    with write_transaction(app.state.sessions) as session:
        defer(session.connection(), _INSERT_INBOUND, [_inbound("committed")])
    with app.state.sessions() as session:
        assert session.execute(select(InboundMessage.message_id)).scalars().all() == ["committed"]


def test_a_kept_write_missing_a_value_is_refused_naming_it_and_nothing_of_its_transaction_is_stored(app: Any) -> None:
    """A statement whose rows lack one of its parameters is a caller's mistake: a ValueError naming the parameter (on
    SQLite at once, on PostgreSQL when the kept writes are sent), never a write with a value left out."""
    mark_answered = update(InboundMessage).where(InboundMessage.message_id == bindparam("mid")).values(response_status=bindparam("status"))
    with pytest.raises(ValueError, match=r"no value for \['status'\]"), write_transaction(app.state.sessions) as session:
        put_resources(session, [(_patient("unwritten", "9990000034"), None)], NOW)
        defer(session.connection(), mark_answered, [{"mid": "m-1"}])
    with app.state.sessions() as session:
        assert get_resource(session, "Patient", "unwritten") is None
