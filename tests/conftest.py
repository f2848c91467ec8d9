"""Shared fixtures: the app on SQLite and on the real PostgreSQL at 127.0.0.1:5432, an injected clock."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select, text

# Check mode for the whole suite (and the servers it starts): every FHIR resource the gateway builds, and every
# reply Bundle, is validated by its fhir.resources R4B model and must serialise byte for byte as the model would.
os.environ["IAP_CHECK_FHIR"] = "1"

from gateway.api.app import create_app  # noqa: E402
from gateway.platform.clock import FixedClock  # noqa: E402
from gateway.platform.security.clients import add_client  # noqa: E402
from gateway.platform.security.credentials import new_api_key  # noqa: E402
from gateway.platform.security.scopes import SCOPES  # noqa: E402
from gateway.platform.settings import Settings  # noqa: E402
from gateway.platform.store.models import ApiClient  # noqa: E402
from gateway.platform.store.repo import count_rows  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures" / "nhs111"
BARS_EXAMPLES = ROOT.parent / "shared" / "research" / "bars-examples"
PG_ADMIN_URL = os.environ.get("IAP_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

# Every log line of the run, from this process and every gateway process the tests start, also goes to one file,
# which tests/test_privacy.py greps, last, for the fixtures' patient identifiers and clinical text.
RUN_LOG = Path(tempfile.mkdtemp(prefix="iap-test-logs-")) / "run.log"
os.environ["IAP_LOG_FILE"] = str(RUN_LOG)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `run_last` run after everything else (they read what the whole run left behind)."""
    items.sort(key=lambda item: item.get_closest_marker("run_last") is not None)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test run (dropped at the end)."""
    name = f"iap_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'gateway.db'}"
    url: str = request.getfixturevalue("pg_url")
    empty_postgres(url)
    return url


def empty_postgres(url: str) -> None:
    """A clean slate for a test: every table but Alembic's emptied; the schema stays."""
    engine = create_engine(url)
    with engine.begin() as conn:
        tables = conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'"))
        names = ", ".join(f'"{name}"' for name in tables.scalars())
        if names:
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY"))
    engine.dispose()


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(NOW)


def gateway_settings(database_url: str, **overrides: Any) -> Settings:
    """The tests' settings: a test environment with no background workers and no MLLP port (tests start what they need)."""
    fields: dict[str, Any] = dict(environment="test", max_body_bytes=262_144, log_json=True, tick_seconds=0, mllp_port=0, deliver_seconds=0)
    return Settings(DATABASE_URL=database_url, **(fields | overrides))


@pytest.fixture
def settings(database_url: str) -> Settings:
    return gateway_settings(database_url)


@pytest.fixture
def app(settings: Settings, clock: FixedClock) -> Iterator[Any]:
    application = create_app(settings, clock)
    yield application
    application.state.engine.dispose()


# One API key made once per test run (scrypt is deliberately slow); each test's store gets a client row for it.
_KEY, _KEY_ID, _KEY_HASH = new_api_key()
ALL_SCOPES = frozenset(SCOPES)


def add_test_client(app: Any, scopes: frozenset[str] | set[str], service: str | None = None, name: str | None = None) -> str:
    """A client in `app`'s store with these scopes (and service binding); returns its API key."""
    name = name or f"test-{uuid.uuid4().hex[:12]}"
    with app.state.sessions.begin() as session:
        if scopes == ALL_SCOPES and service is None:
            if session.execute(select(ApiClient.id).where(ApiClient.key_id == _KEY_ID)).first() is not None:
                return _KEY
            session.add(
                ApiClient(
                    id=str(uuid.uuid4()),
                    name=name,
                    scopes=" ".join(sorted(ALL_SCOPES)),
                    key_id=_KEY_ID,
                    key_hash=_KEY_HASH,
                    active=True,
                    created_at=NOW,
                )
            )
            return _KEY
        _, key = add_client(session, name, frozenset(scopes), NOW, service_id=service)
    assert key is not None
    return key


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def all_scopes_key(app: Any) -> str:
    """The API key of a client holding every scope (admin too): what `client` sends."""
    return add_test_client(app, ALL_SCOPES)


@pytest.fixture
def client(app: Any, all_scopes_key: str) -> Iterator[TestClient]:
    """The app over HTTP, authenticated as a client with every scope (so tests speak to what a route does)."""
    with TestClient(app, raise_server_exceptions=False, headers=bearer(all_scopes_key)) as test_client:
        yield test_client


@pytest.fixture
def client_with(app: Any) -> Iterator[Any]:
    """`client_with({"ingest:nhs111"}, service=None)`: a TestClient authenticated as a new client with just those scopes."""
    opened: list[TestClient] = []

    def make(scopes: set[str] | frozenset[str], service: str | None = None) -> TestClient:
        key = add_test_client(app, frozenset(scopes), service)
        test_client = TestClient(app, raise_server_exceptions=False, headers=bearer(key))
        test_client.__enter__()
        opened.append(test_client)
        return test_client

    yield make
    for test_client in opened:
        test_client.__exit__(None, None, None)


@pytest.fixture
def anonymous(app: Any) -> Iterator[TestClient]:
    """The app over HTTP with no credential at all."""
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """`app` on a real uvicorn server on 127.0.0.1 (in a thread); yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", limit_concurrency=100))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


# A database error's text can quote the values of the row it refused: SQLAlchemy's "[parameters: ...]", PostgreSQL's
# "DETAIL: Key (value)=(...)". This trigger makes storing an NHS number fail (on PostgreSQL quoting it), as such an
# error would.
_REFUSE_NHS_NUMBERS = {
    "sqlite": [
        "CREATE TRIGGER refuse_nhs_numbers BEFORE INSERT ON resource_identifiers WHEN NEW.system LIKE '%nhs-number'"
        " BEGIN SELECT RAISE(ABORT, 'refused'); END"
    ],
    "postgresql": [
        "CREATE FUNCTION refuse_nhs_number() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " IF NEW.system LIKE '%nhs-number' THEN RAISE EXCEPTION 'refused identifier %', NEW.value; END IF; RETURN NEW; END $$",
        "CREATE TRIGGER refuse_nhs_numbers BEFORE INSERT ON resource_identifiers FOR EACH ROW EXECUTE FUNCTION refuse_nhs_number()",
    ],
}
_ALLOW_NHS_NUMBERS = {
    "sqlite": ["DROP TRIGGER IF EXISTS refuse_nhs_numbers"],
    "postgresql": ["DROP TRIGGER IF EXISTS refuse_nhs_numbers ON resource_identifiers", "DROP FUNCTION IF EXISTS refuse_nhs_number()"],
}


@contextmanager
def refusing_nhs_numbers(engine: Any) -> Iterator[None]:
    """While inside: the store (`engine`'s, migrated) fails every transaction that stores an NHS number (a trigger), as a
    failing database would. Removed afterwards, also from the test run's shared PostgreSQL database."""
    kind = engine.dialect.name
    try:
        with engine.begin() as connection:
            for statement in _REFUSE_NHS_NUMBERS[kind]:
                connection.execute(text(statement))
        yield
    finally:
        with engine.begin() as connection:
            for statement in _ALLOW_NHS_NUMBERS[kind]:
                connection.execute(text(statement))


def writer_held_elsewhere(app: Any) -> AbstractContextManager[Callable[[], None]]:
    """Another writer (a CLI run, another worker process) holds `app`'s SQLite file's writer lock until `release()`."""
    return sqlite_writer_held(app.state.engine.url.database)


@contextmanager
def sqlite_writer_held(database: Path | str) -> Iterator[Callable[[], None]]:
    """Another writer holds the writer lock of the SQLite file `database` until `release()` (or the end)."""
    fd = os.open(f"{database}-writer.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            fcntl.flock(fd, fcntl.LOCK_UN)
            released = True

    try:
        yield release
    finally:
        release()
        os.close(fd)


@contextmanager
def locked_sqlite_file(path: Path | str) -> Iterator[None]:
    """Another process's exclusive transaction on the file (a tool holding it): readers go on, writers wait, then fail."""
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        yield
        holder.execute("ROLLBACK")
    finally:
        holder.close()


@pytest.fixture
def server_url(app: Any) -> Iterator[str]:
    with serving(app) as url:
        yield url


@pytest.fixture
def stored(app: Any):  # type: ignore[no-untyped-def]
    """Row counts by resource type (and InboundMessage) as the store holds them now."""

    def counts() -> dict[str, int]:
        with app.state.sessions() as session:
            return count_rows(session)

    return counts


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def fixture_json(name: str) -> dict[str, Any]:
    return json.loads(fixture_bytes(name))


def bars_headers(request_id: str | None = None, correlation_id: str | None = None) -> dict[str, str]:
    return {
        "Content-Type": "application/fhir+json",
        "X-Request-Id": request_id or str(uuid.uuid4()),
        "X-Correlation-Id": correlation_id or str(uuid.uuid4()),
    }


def task_of(reply_bundle: dict[str, Any]) -> dict[str, Any]:
    return next(e["resource"] for e in reply_bundle["entry"] if e["resource"]["resourceType"] == "Task")


def issues(outcome: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(severity, element, diagnostics) per OperationOutcome issue."""
    assert outcome["resourceType"] == "OperationOutcome", outcome
    return [(i["severity"], (i.get("expression") or [""])[0], i.get("diagnostics", "")) for i in outcome["issue"]]


# the GPPROVIDER_ automatic-routing address of fixture patient 9990000018 (born 1988-04-12, Testpatient):
# mesh-sandbox does not route these, so the tests register the address as a mailbox to see what arrives there
GPPROVIDER_TESTPATIENT = "GPPROVIDER_9990000018_19880412_TESTPATIENT"


@pytest.fixture(scope="session")
def mesh_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One NHS England mesh-sandbox for the session (its own venv and process), reset before each test that uses it."""
    from tests.mesh_sandbox import start_sandbox

    sandbox = start_sandbox(tmp_path_factory.mktemp("mesh") / "store", (GPPROVIDER_TESTPATIENT,))
    yield sandbox
    sandbox.stop()


@pytest.fixture
def mesh(mesh_sandbox: Any) -> Any:
    mesh_sandbox.reset()
    return mesh_sandbox


def metric_value(text_body: str, name: str, **labels: str) -> float:
    """The value of one series in a /metrics text (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text_body.splitlines():
        if line.startswith("#"):
            continue
        metric, _, value = line.rpartition(" ")
        metric_name, _, label_text = metric.partition("{")
        if metric_name == name and ",".join(sorted(label_text.rstrip("}").split(","))) == wanted:
            return float(value)
    return 0.0
