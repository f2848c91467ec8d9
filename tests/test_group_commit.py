"""Group commit on SQLite (gateway.platform.store.group_commit): messages waiting for the writer share one commit,
each with its own reply and its own AuditEvent, a failing one fails alone, and a failed shared COMMIT stores none
of its messages and answers none of them from it. Over real HTTP."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, text

from gateway.api.app import create_app
from gateway.platform.store.db import group_commit, make_engine, make_sessionmaker
from gateway.platform.store.group_commit import GroupCommit
from gateway.platform.store.repo import count_rows
from tests.conftest import (
    ALL_SCOPES,
    add_test_client,
    bearer,
    fixture_bytes,
    gateway_settings,
    locked_sqlite_file,
    metric_value,
    serving,
    writer_held_elsewhere,
)

SENDERS = 4


@pytest.fixture
def sqlite_app(tmp_path: Path, clock: Any) -> Iterator[Any]:
    """The app on a SQLite file, working on SENDERS messages at once (so they can all wait for the writer)."""
    application = create_app(gateway_settings(f"sqlite:///{tmp_path}/gateway.db", ingest_concurrency=SENDERS), clock)
    yield application
    application.state.engine.dispose()


def _case(case_id: str) -> bytes:
    return json.dumps(json.loads(fixture_bytes("option2-standard.case.json")) | {"case_id": case_id}).encode()


def _commits(app: Any) -> tuple[float, float]:
    """(commits, messages committed) so far, from /metrics (`iap_store_commit_messages`)."""
    with TestClient(app, headers=bearer(add_test_client(app, {"metrics:read"}))) as operator:
        text = operator.get("/metrics").text
    return metric_value(text, "iap_store_commit_messages_count"), metric_value(text, "iap_store_commit_messages_sum")


def _since(app: Any, before: tuple[float, float]) -> tuple[float, float]:
    now = _commits(app)
    return now[0] - before[0], now[1] - before[1]


def _send_while_the_writer_is_held(
    app: Any, sends: list[tuple[str, bytes]], meanwhile: AbstractContextManager[None] | None = None
) -> list[httpx.Response]:
    """POST each (API key, body) at once while another writer holds the file; release it once all are waiting:
    the first is written on its own (it was alone when it came), the rest wait for it and then share a commit.
    `meanwhile`: entered before the release, left once every reply is in (the file locked by a tool, say)."""
    group = group_commit(app.state.sessions)
    assert group is not None
    with serving(app) as url, writer_held_elsewhere(app) as release, ThreadPoolExecutor(len(sends)) as pool:

        def post(send: tuple[str, bytes]) -> httpx.Response:
            with httpx.Client(timeout=60, headers=bearer(send[0])) as http:
                return http.post(f"{url}/ingest/nhs111", content=send[1])

        futures = [pool.submit(post, send) for send in sends]
        deadline = time.monotonic() + 30
        while group.queued() < len(sends) - 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert group.queued() == len(sends) - 1, "the messages did not all reach the writer"
        with meanwhile or nullcontext():
            release()
            return [future.result() for future in futures]


def test_messages_waiting_for_the_sqlite_writer_share_one_commit_each_with_its_own_reply_and_audit_event(sqlite_app: Any) -> None:
    keys = [add_test_client(sqlite_app, {"ingest:nhs111"}, name=f"sender-{n}") for n in range(SENDERS)]
    sends = [(key, _case(f"GROUP-{n}-{uuid.uuid4().hex[:8]}")) for n, key in enumerate(keys)]
    before = _commits(sqlite_app)

    replies = _send_while_the_writer_is_held(sqlite_app, sends)

    assert [r.status_code for r in replies] == [201] * SENDERS, [r.text for r in replies]
    # /metrics: two commits, one of the first message alone and one of the other three together
    assert _since(sqlite_app, before) == (2, SENDERS)
    tasks = [next(e["resource"] for e in r.json()["entry"] if e["resource"]["resourceType"] == "Task") for r in replies]
    assert len({t["id"] for t in tasks}) == SENDERS
    # each message has its own AuditEvent, naming its Task and the client that sent it (not the thread that wrote the batch)
    with TestClient(sqlite_app, headers=bearer(add_test_client(sqlite_app, ALL_SCOPES))) as auditor:
        for n, task in enumerate(tasks):
            assert auditor.get(f"/fhir/Task/{task['id']}").status_code == 200
            events = auditor.get("/fhir/AuditEvent", params={"entity": f"Task/{task['id']}", "action": "C"}).json()
            assert [e["resource"]["agent"][0]["who"]["display"] for e in events.get("entry", [])] == [f"sender-{n}"]


def test_a_copy_of_a_message_in_the_same_shared_commit_fails_alone_and_gets_the_original_reply(sqlite_app: Any, capsys: Any) -> None:
    key = add_test_client(sqlite_app, {"ingest:nhs111"})
    same = _case(f"GROUP-SAME-{uuid.uuid4().hex[:8]}")
    sends = [(key, _case(f"GROUP-A-{uuid.uuid4().hex[:8]}")), (key, same), (key, _case(f"GROUP-B-{uuid.uuid4().hex[:8]}")), (key, same)]

    replies = _send_while_the_writer_is_held(sqlite_app, sends)

    assert [r.status_code for r in replies] == [201] * 4
    assert replies[1].text == replies[3].text  # the copy is answered with the original's reply
    assert sum("X-Duplicate-Of" in r.headers for r in (replies[1], replies[3])) == 1
    with sqlite_app.state.sessions() as session:
        counts = count_rows(session)
    assert counts["Task"] == 3 and counts["InboundMessage"] == 3
    # the batch was rolled back and written again message by message: no other sender saw an error and tried again
    logged = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert [e["event"] for e in logged if e["event"].startswith("store.")] == []
    assert sum(e["event"] == "message.resent" for e in logged) == 1


def test_a_lock_wait_that_runs_out_in_a_shared_commit_answers_each_of_its_messages_at_once_not_after_writing_each_alone(
    tmp_path: Path, clock: Any, monkeypatch: Any, capsys: Any
) -> None:
    """The file locked by a tool's exclusive transaction while messages wait to share a commit: the statement that
    waits 0.3 s (IAP_DB_STATEMENT_TIMEOUT_MS) and fails is the store's failure, not one message's, so every message of
    the batch is answered 503 at once, and each is taken when sent again. Before, each was then written alone,
    waiting 0.3 s in turn, then tried twice more: a batch of n waited (n + 1) x 3 x the timeout."""
    settings = gateway_settings(f"sqlite:///{tmp_path}/gateway.db", ingest_concurrency=SENDERS, db_statement_timeout_ms=300)
    application = create_app(settings, clock)
    written_alone: list[int] = []
    alone = GroupCommit._alone

    def counted_alone(self: GroupCommit, waiting: Any) -> None:
        written_alone.append(1)
        alone(self, waiting)

    monkeypatch.setattr(GroupCommit, "_alone", counted_alone)
    try:
        key = add_test_client(application, {"ingest:nhs111"})
        sends = [(key, _case(f"GROUP-LOCKED-{n}-{uuid.uuid4().hex[:8]}")) for n in range(SENDERS)]
        replies = _send_while_the_writer_is_held(application, sends, locked_sqlite_file(f"{tmp_path}/gateway.db"))
        assert [r.status_code for r in replies] == [503] * SENDERS, [r.text for r in replies]
        assert len(written_alone) == 1  # the first, which came alone; the batch of three was not written again one by one
        logged = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
        assert [e["event"] for e in logged if e["event"] == "store.retry"] == []  # a lock wait that ran its time is not tried again
        with serving(application) as url, httpx.Client(timeout=60, headers=bearer(key)) as http:
            assert [http.post(f"{url}/ingest/nhs111", content=body).status_code for _, body in sends] == [201] * SENDERS
        with application.state.sessions() as session:
            assert count_rows(session)["Task"] == SENDERS
    finally:
        application.state.engine.dispose()


def test_a_message_whose_own_statement_fails_in_a_shared_commit_fails_alone_the_others_are_stored(sqlite_app: Any, capsys: Any) -> None:
    """A statement error of one message's own (here a trigger's function refusing its raw bytes, an OperationalError
    as SQLite reports a function's failure) is not the store's: the batch is written again message by message, so
    only that message fails (503, after its retries) and the others are stored. Only a wait for the file's lock that
    ran its time fails the whole batch at once (the test above)."""

    def refuse(raw: bytes) -> int:
        if b"GROUP-POISON" in raw:
            raise ValueError("refused")
        return 0

    engine = sqlite_app.state.engine
    event.listen(engine, "connect", lambda connection, _record: connection.create_function("refuse", 1, refuse))
    engine.dispose()  # every connection from now on has the function
    with engine.begin() as connection:
        connection.execute(text("CREATE TRIGGER poison BEFORE INSERT ON inbound_messages BEGIN SELECT refuse(NEW.raw); END"))
    key = add_test_client(sqlite_app, {"ingest:nhs111"})
    sends = [(key, _case(f"GROUP-{kind}-{uuid.uuid4().hex[:8]}")) for kind in ("FIRST", "A", "POISON", "B")]

    replies = _send_while_the_writer_is_held(sqlite_app, sends)

    assert [r.status_code for r in replies] == [201, 201, 503, 201], [r.text for r in replies]
    with sqlite_app.state.sessions() as session:
        assert count_rows(session)["InboundMessage"] == 3
    logged = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    # the refused message tried three times (two retries); the others, written again alone, were stored the first time
    assert [e["event"] for e in logged if e["event"] == "store.retry"] == ["store.retry"] * 2


def test_threads_that_find_the_writer_free_commit_on_their_own(sqlite_app: Any) -> None:
    key = add_test_client(sqlite_app, {"ingest:nhs111"})
    before = _commits(sqlite_app)
    with serving(sqlite_app) as url, httpx.Client(timeout=60, headers=bearer(key)) as http:
        for n in range(3):
            assert http.post(f"{url}/ingest/nhs111", content=_case(f"ALONE-{n}-{uuid.uuid4().hex[:8]}")).status_code == 201
    assert _since(sqlite_app, before) == (3, 3)  # three commits of one message each


def test_postgresql_writers_do_not_wait_for_one_another_so_nothing_is_grouped(pg_url: str) -> None:
    engine = make_engine(pg_url)
    try:
        assert group_commit(make_sessionmaker(engine)) is None  # each message commits on its own transaction
    finally:
        engine.dispose()


def test_a_failed_shared_commit_stores_none_of_its_messages_and_each_is_written_again(
    sqlite_app: Any, monkeypatch: Any, capsys: Any
) -> None:
    """The shared COMMIT fails once (as a full disk or an I/O error would): nothing of the batch is stored and
    nobody is answered from it; each sender retries on its own, and every message ends stored once, with one
    AuditEvent and its 201."""
    import sqlite3
    import sys
    from types import FrameType

    dialect = sqlite_app.state.engine.dialect
    real_commit = dialect.do_commit
    failed: list[bool] = []

    def commit_failing_once_when_shared(connection: Any) -> None:
        frame: FrameType | None = sys._getframe(1)
        shared = False
        while frame is not None and not shared:
            shared, frame = frame.f_code.co_name == "_together", frame.f_back
        if shared and not failed:
            failed.append(True)
            raise sqlite3.OperationalError("disk I/O error")
        real_commit(connection)

    monkeypatch.setattr(dialect, "do_commit", commit_failing_once_when_shared)
    keys = [add_test_client(sqlite_app, {"ingest:nhs111"}, name=f"sender-{n}") for n in range(SENDERS)]
    sends = [(key, _case(f"GROUP-FAIL-{n}-{uuid.uuid4().hex[:8]}")) for n, key in enumerate(keys)]
    before = _commits(sqlite_app)

    replies = _send_while_the_writer_is_held(sqlite_app, sends)

    assert failed == [True]
    assert [r.status_code for r in replies] == [201] * SENDERS, [r.text for r in replies]
    with sqlite_app.state.sessions() as session:
        counts = count_rows(session)
    assert counts["Task"] == SENDERS and counts["InboundMessage"] == SENDERS
    assert _since(sqlite_app, before)[1] == SENDERS  # the failed commit counted no message
    logged = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert [e["event"] for e in logged if e["event"] == "store.retry"] == ["store.retry"] * (SENDERS - 1)  # the batch's three
    tasks = [next(e["resource"] for e in r.json()["entry"] if e["resource"]["resourceType"] == "Task") for r in replies]
    with TestClient(sqlite_app, headers=bearer(add_test_client(sqlite_app, ALL_SCOPES))) as auditor:
        for n, task in enumerate(tasks):
            events = auditor.get("/fhir/AuditEvent", params={"entity": f"Task/{task['id']}", "action": "C"}).json()
            assert [e["resource"]["agent"][0]["who"]["display"] for e in events.get("entry", [])] == [f"sender-{n}"]
