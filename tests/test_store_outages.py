"""When the gateway cannot take a message now: its store unavailable for a while (PostgreSQL refusing connections, a
SQLite file locked by another process), or a backlog longer than IAP_INGEST_QUEUE_SECONDS.

A sender is told 503 `REC_SERVICE_UNAVAILABLE` `transient` with `Retry-After` over HTTP (BaRS senders retry a 503,
not a 500) and AR `store unavailable: send it again (<reference>)` over MLLP; the same message sent again once the
store is back is taken, once. Each test on both stores unless its docstring says why not, through a real server
(HTTP) or a real MLLP session.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from adapters.hl7v2 import frame
from gateway.api.app import create_app
from gateway.platform.clock import FixedClock
from tests.conftest import (
    ALL_SCOPES,
    NOW,
    PG_ADMIN_URL,
    add_test_client,
    bearer,
    fixture_bytes,
    gateway_settings,
    locked_sqlite_file,
    metric_value,
    serving,
    sqlite_writer_held,
    writer_held_elsewhere,
)
from tests.test_hl7v2 import err, msa, read_acks, rio, running_mllp

Outage = Callable[[], AbstractContextManager[None]]


@dataclass(frozen=True)
class Store:
    url: str
    outage: Outage  # the store unavailable while inside
    writes_held: Callable[[], AbstractContextManager[object]]  # the store up, but writes wait while inside (another's lock)


@contextmanager
def _refusing_connections(admin: Any, name: str) -> Iterator[None]:
    """PostgreSQL refusing every connection to the database and closing those open (as in a restart), then back."""
    with admin.connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
        conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"), {"name": name})
    try:
        yield
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))


@contextmanager
def _resources_locked(url: str) -> Iterator[None]:
    """Another PostgreSQL session holding an EXCLUSIVE lock on `resources`: reads go on, writes wait."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("LOCK TABLE resources IN EXCLUSIVE MODE"))
            yield
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A store of its own (PostgreSQL: a database of its own, since the outage closes every connection to it), and
    ways to make it unavailable, or slow to write, for a while."""
    if request.param == "sqlite":
        path = tmp_path / "gateway.db"
        yield Store(f"sqlite:///{path}", lambda: locked_sqlite_file(path), lambda: sqlite_writer_held(path))
        return
    name = f"iap_outage_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield Store(url, lambda: _refusing_connections(admin, name), lambda: _resources_locked(url))
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def gateway(store: Store) -> Iterator[Any]:
    """The gateway on `store`, a statement waiting at most 0.3 s for a lock (IAP_DB_STATEMENT_TIMEOUT_MS)."""
    application = create_app(gateway_settings(store.url, db_statement_timeout_ms=300), FixedClock(NOW))
    yield application
    application.state.engine.dispose()


def _case(case_id: str) -> bytes:
    return json.dumps(json.loads(fixture_bytes("option2-red-flag.case.json")) | {"case_id": case_id}).encode()


def _unavailable_reference(reply: httpx.Response) -> str:
    """Checks a 503 store-unavailable reply; returns the reference it gives."""
    assert reply.status_code == 503, reply.text
    assert reply.headers["Retry-After"] == "5" and reply.headers["Content-Type"].startswith("application/fhir+json")
    (issue,) = reply.json()["issue"]
    assert (issue["severity"], issue["code"]) == ("error", "transient")
    assert issue["details"]["coding"] == [{"system": "https://fhir.nhs.uk/Codesystem/http-error-codes", "code": "REC_SERVICE_UNAVAILABLE"}]
    assert issue["diagnostics"].startswith("the store is unavailable just now; send the request again after 5 s")
    return str(issue["diagnostics"].rsplit("reference ", 1)[1])


def _counted(before: str, after: str, name: str, **labels: str) -> float:
    """How much a series of /metrics grew between two readings."""
    return metric_value(after, name, **labels) - metric_value(before, name, **labels)


def _log_events(captured: str, event: str) -> list[dict[str, Any]]:
    return [line for line in (json.loads(x) for x in captured.splitlines() if x.startswith("{")) if line.get("event") == event]


def test_a_referral_sent_while_the_store_is_unavailable_is_answered_503_retry_after_and_taken_once_when_sent_again(
    gateway: Any, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    key = add_test_client(gateway, ALL_SCOPES)
    with serving(gateway) as base, httpx.Client(base_url=base, headers=bearer(key), timeout=30) as http:
        assert http.post("/ingest/nhs111", content=_case("OUTAGE-0001")).status_code == 201
        metrics_before = http.get("/metrics").text
        with store.outage():
            during = http.post("/ingest/nhs111", content=_case("OUTAGE-0002"), headers={"X-Request-Id": "req-outage-0002"})
        again = http.post("/ingest/nhs111", content=_case("OUTAGE-0002"))  # the sender sends it again, as told
        resent = http.post("/ingest/nhs111", content=_case("OUTAGE-0002"))
        tasks = http.get("/fhir/Task", params={"_count": 50}).json()
        metrics_after = http.get("/metrics").text
    reference = _unavailable_reference(during)
    assert during.headers["X-Request-Id"] == "req-outage-0002"  # BaRS transaction integrity holds for a 503 too
    assert again.status_code == 201 and "X-Duplicate-Of" not in again.headers  # not a re-send: it was not taken before
    assert resent.status_code == 201 and "X-Duplicate-Of" in resent.headers
    assert tasks["total"] == 2  # one Task per referral: the one sent during the outage is taken once
    assert _counted(metrics_before, metrics_after, "iap_http_requests_total", route="/ingest/nhs111", method="POST", status="503") == 1
    assert _counted(metrics_before, metrics_after, "iap_messages_total", source="nhs111", outcome="unavailable") == 1
    logs = capsys.readouterr().err
    (logged,) = [e for e in _log_events(logs, "request.unavailable") if e["reference"] == reference]
    assert logged["route"] == "/ingest/nhs111" and logged["error"] == "OperationalError" and logged["level"] == "warning"
    assert "Traceback" not in logs and "request.crashed" not in logs  # an outage is not a crash: one line per request
    assert _log_events(logs, "store.retry") == []  # a lock wait that ran its time (SQLite) is not waited again: answered now


def test_a_read_while_the_store_is_unavailable_is_answered_503_and_served_once_it_is_back(gateway: Any, store: Store) -> None:
    """PostgreSQL: the credential check cannot reach it. SQLite: the read is served from the file, but its
    AuditEvent cannot be written while another process holds the lock, and no read goes unaudited."""
    key = add_test_client(gateway, ALL_SCOPES)
    with serving(gateway) as base, httpx.Client(base_url=base, headers=bearer(key), timeout=30) as http:
        with store.outage():
            during = http.get("/fhir/Task")
        after = http.get("/fhir/Task")
    _unavailable_reference(during)
    assert after.status_code == 200 and after.json()["resourceType"] == "Bundle"


def test_an_hl7_message_sent_while_the_store_is_unavailable_is_answered_AR_store_unavailable_and_taken_when_sent_again(
    gateway: Any, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    adt = rio("adt-a04-register.hl7")
    with running_mllp(gateway) as port:
        with store.outage(), socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(frame(adt))
            (failed,) = read_acks(sock, 1)
        with socket.create_connection(("127.0.0.1", port)) as sock:  # the sender sends it again, as AR asks
            sock.sendall(frame(adt))
            (taken,) = read_acks(sock, 1)
    _, code, control_id, reason = msa(failed)[:4]
    assert (code, control_id) == ("AR", "RIO-ADT-0002") and reason.startswith("store unavailable: send it again (")
    assert "^207&" in err(failed)  # HL7 table 0357: application internal error (0357 has no code for an outage)
    reference = reason.removeprefix("store unavailable: send it again (").removesuffix(")")
    assert msa(taken)[1:3] == ["AA", "RIO-ADT-0002"]
    logs = capsys.readouterr().err
    (logged,) = [e for e in _log_events(logs, "mllp.unavailable") if e["reference"] == reference]
    assert logged["error"] == "OperationalError" and "mllp.failed" not in logs and "Traceback" not in logs
    with gateway.state.sessions() as session:
        stored = session.execute(text("SELECT count(*) FROM inbound_messages WHERE channel = 'hl7v2'")).scalar_one()
    assert stored == 1


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_a_write_waits_at_most_IAP_DB_STATEMENT_TIMEOUT_MS_for_a_sqlite_writer_lock_held_elsewhere_then_is_answered_503_or_AR(
    gateway: Any, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another process holds the file's writer lock and does not let it go (a CLI command suspended with Ctrl-Z, say).
    A referral over HTTP and an ADT over MLLP each wait 0.3 s (IAP_DB_STATEMENT_TIMEOUT_MS) for it, are told to send
    again, and are taken when they do once it is let go. Before, both waited for as long as the lock was held.

    SQLite only: the writer lock is SQLite's (one writer per file); PostgreSQL's writers do not wait for one another."""
    key = add_test_client(gateway, ALL_SCOPES)
    adt = rio("adt-a04-register.hl7")
    with serving(gateway) as base, running_mllp(gateway) as port, httpx.Client(base_url=base, headers=bearer(key), timeout=20) as http:
        assert http.post("/ingest/nhs111", content=_case("HELD-0001")).status_code == 201
        with writer_held_elsewhere(gateway):
            during = http.post("/ingest/nhs111", content=_case("HELD-0002"))
            with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
                sock.sendall(frame(adt))
                (refused,) = read_acks(sock, 1)
        again = http.post("/ingest/nhs111", content=_case("HELD-0002"))
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(frame(adt))
            (taken,) = read_acks(sock, 1)
        tasks = http.get("/fhir/Task", params={"_count": 50}).json()
    reference = _unavailable_reference(during)
    assert again.status_code == 201 and "X-Duplicate-Of" not in again.headers
    assert msa(refused)[1] == "AR" and msa(refused)[3].startswith("store unavailable: send it again (")
    assert msa(taken)[1:3] == ["AA", "RIO-ADT-0002"]
    assert tasks["total"] == 2
    logs = capsys.readouterr().err
    (logged,) = [e for e in _log_events(logs, "request.unavailable") if e["reference"] == reference]
    assert logged["error"] == "WriterLockTimeout"
    assert [e["error"] for e in _log_events(logs, "mllp.unavailable")] == ["WriterLockTimeout"]
    assert _log_events(logs, "store.retry") == []  # each waited its 0.3 s once, not three times


def test_a_message_that_waits_past_IAP_INGEST_QUEUE_SECONDS_for_its_turn_is_answered_503_busy_unaudited_and_taken_when_sent_again(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """One message at a time (IAP_INGEST_CONCURRENCY=1), held in the store by another's lock (PostgreSQL: a session's
    lock on `resources`; SQLite: another process holding the file's writer lock); the next one waits 0.3 s for its
    turn, is told to come back, and is taken when it does.

    The busy reply has no AuditEvent (nothing of it was read; it is logged with its client and counted): turning a
    message away costs no write. With one, on SQLite the busy reply waited for the very writer that held up its turn
    (the one writer of the file), up to IAP_DB_STATEMENT_TIMEOUT_MS, and under a peak each message turned away took
    the writer from those being taken.
    """
    settings = gateway_settings(store.url, ingest_concurrency=1, ingest_queue_seconds=0.3, db_statement_timeout_ms=20_000)
    application = create_app(settings, FixedClock(NOW))
    key = add_test_client(application, ALL_SCOPES)
    try:
        with serving(application) as base, httpx.Client(base_url=base, headers=bearer(key), timeout=30) as http:
            first: list[httpx.Response] = []
            before = http.get("/metrics").text
            with store.writes_held():
                sender = threading.Thread(target=lambda: first.append(http.post("/ingest/nhs111", content=_case("BUSY-0001"))))
                sender.start()
                time.sleep(1.0)  # the first message has its turn and waits for the lock
                started = time.monotonic()
                busy = http.post("/ingest/nhs111", content=_case("BUSY-0002"))
                waited = time.monotonic() - started
            sender.join(timeout=30)
            again = http.post("/ingest/nhs111", content=_case("BUSY-0002"))
            tasks = http.get("/fhir/Task").json()
            after = http.get("/metrics").text
            failures = http.get("/fhir/AuditEvent", params={"outcome": "8"}).json()
            creates = http.get("/fhir/AuditEvent", params={"subtype": "create"}).json()
    finally:
        application.state.engine.dispose()
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "5", busy.text
    (issue,) = busy.json()["issue"]
    assert (issue["code"], issue["details"]["coding"][0]["code"]) == ("transient", "REC_SERVICE_UNAVAILABLE")
    assert issue["diagnostics"].startswith("the gateway is busy: the message waited 0.3 s for its turn and was not taken")
    assert 0.3 <= waited < 10  # answered when its wait ran out, not when the first message was done
    assert [r.status_code for r in first] == [201] and again.status_code == 201 and "X-Duplicate-Of" not in again.headers
    assert tasks["total"] == 2
    assert _counted(before, after, "iap_messages_total", source="nhs111", outcome="unavailable") == 1
    assert _counted(before, after, "iap_ingest_wait_seconds_count") == 3  # every message's wait for its turn, the one turned away too
    assert _counted(before, after, "iap_ingest_wait_seconds_bucket", le="0.1") == 2  # the first and the one sent again
    assert _counted(before, after, "iap_ingest_wait_seconds_bucket", le="0.5") == 3  # the busy one waited 0.3 s
    (logged,) = _log_events(capsys.readouterr().err, "request.busy")
    assert (logged["route"], logged["waited_seconds"], logged["level"]) == ("/ingest/nhs111", 0.3, "warning")
    assert logged["client"].startswith("test-")  # who was turned away: in the log, as the busy reply has no AuditEvent
    assert failures["total"] == 0  # no event for the busy reply (it would be outcome 8, "HTTP 503")
    assert creates["total"] == 2  # the two referrals taken, each audited with its change


def test_an_outage_in_the_middle_of_traffic_loses_no_referral_and_stores_none_twice(
    gateway: Any, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """Four senders, each sending its referrals one after another and sending again any answered 503 (as BaRS senders
    do; here after 0.05 s, not Retry-After's 5), while the store goes away for a few seconds (PostgreSQL: connections
    closed in the middle of transactions, then refused; SQLite: the file locked) and comes back. Every referral ends up
    taken exactly once, and no request is answered anything but 201 or 503."""
    key = add_test_client(gateway, ALL_SCOPES)
    statuses: list[int] = []
    done: list[str] = []
    failures: list[str] = []

    def sender(number: int, base: str) -> None:
        with httpx.Client(base_url=base, headers=bearer(key), timeout=30) as http:
            for n in range(15):
                case_id = f"OUTAGE-TRAFFIC-{number}-{n:02d}"
                for _ in range(200):
                    reply = http.post("/ingest/nhs111", content=_case(case_id))
                    statuses.append(reply.status_code)
                    if reply.status_code != 503:
                        break
                    time.sleep(0.05)
                (done if reply.status_code == 201 else failures).append(f"{case_id}: {reply.status_code}")

    with serving(gateway) as base:
        senders = [threading.Thread(target=sender, args=(number, base)) for number in range(4)]
        for thread in senders:
            thread.start()
        while len(done) < 8 and any(thread.is_alive() for thread in senders):  # the traffic under way
            time.sleep(0.01)
        with store.outage():
            time.sleep(2.0)  # longer than a message waits for the store (0.3 s): the senders meet the outage
        for thread in senders:
            thread.join(timeout=120)
    with gateway.state.sessions() as session:
        messages = session.execute(text("SELECT count(*), count(DISTINCT message_id) FROM inbound_messages")).one()
        tasks = session.execute(text("SELECT count(*) FROM resources WHERE resource_type = 'Task'")).scalar_one()
    assert failures == [] and len(done) == 60
    assert set(statuses) == {201, 503}  # the outage met the traffic, and nothing was a 500
    assert tuple(messages) == (60, 60) and tasks == 60
    assert "request.crashed" not in capsys.readouterr().err
