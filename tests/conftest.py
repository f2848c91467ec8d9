"""Shared fixtures: the app on SQLite and on the real PostgreSQL at 127.0.0.1:5432, an injected clock."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

# Check mode for the whole suite (and the servers it starts): every FHIR resource the gateway builds, and every
# reply Bundle, is validated by its fhir.resources R4B model and must serialise byte for byte as the model would.
os.environ["IAP_CHECK_FHIR"] = "1"

from gateway.api.app import create_app  # noqa: E402
from gateway.clock import FixedClock  # noqa: E402
from gateway.settings import Settings  # noqa: E402
from gateway.store.repo import count_rows  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures" / "nhs111"
BARS_EXAMPLES = ROOT.parent / "shared" / "research" / "bars-examples"
PG_ADMIN_URL = os.environ.get("IAP_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


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
    engine = create_engine(url)
    with engine.begin() as conn:  # a clean slate per test; the schema stays
        for table in ("inbound_messages", "resource_identifiers", "resources", "resource_tokens", "outbox", "outbox_events"):
            if conn.execute(text(f"SELECT to_regclass('{table}')")).scalar():
                conn.execute(text(f"TRUNCATE {table} RESTART IDENTITY"))
    engine.dispose()
    return url


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(NOW)


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        DATABASE_URL=database_url,
        environment="test",
        max_body_bytes=262_144,
        log_json=True,
        tick_seconds=0,
        mllp_port=0,
        deliver_seconds=0,
    )


@pytest.fixture
def app(settings: Settings, clock: FixedClock) -> Iterator[Any]:
    application = create_app(settings, clock)
    yield application
    application.state.engine.dispose()


@pytest.fixture
def client(app: Any) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


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
