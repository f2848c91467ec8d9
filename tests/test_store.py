"""The store: migrations match the models, versions count up, on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from gateway.platform.store import db
from gateway.platform.store.models import Base
from gateway.platform.store.repo import first_versions, get_resource, put_resource, put_resources
from tests.conftest import NOW, PG_ADMIN_URL, empty_postgres


def test_migrations_create_exactly_the_schema_the_models_describe(app: Any) -> None:
    with app.state.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_put_resource_keeps_the_version_for_the_same_content_and_counts_up_on_change(app: Any) -> None:
    patient = {
        "resourceType": "Patient",
        "id": "p1",
        "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9990000018"}],
    }
    with app.state.sessions.begin() as session:
        first, outcome = put_resource(session, patient, NOW)
    assert outcome == "created" and first["meta"]["versionId"] == "1"
    with app.state.sessions.begin() as session:
        _, outcome = put_resource(session, patient, NOW + timedelta(minutes=1))
    assert outcome == "unchanged"
    with app.state.sessions.begin() as session:
        changed, outcome = put_resource(session, {**patient, "gender": "female"}, NOW + timedelta(minutes=2))
    assert outcome == "updated" and changed["meta"]["versionId"] == "2"
    with app.state.sessions() as session:
        stored = get_resource(session, "Patient", "p1")
    assert stored is not None and stored["gender"] == "female" and stored["meta"]["lastUpdated"] == "2026-11-23T12:02:00Z"


def test_first_versions_made_ahead_store_exactly_what_the_transaction_would(app: Any) -> None:
    """put_resources(first=...) is an optimisation only: same rows, versions and outcomes as without it."""
    nhs = "https://fhir.nhs.uk/Id/nhs-number"
    made = {"resourceType": "Patient", "id": "ahead", "identifier": [{"system": nhs, "value": "9990000026"}]}
    plain = {**made, "id": "plain", "identifier": [{"system": nhs, "value": "9990000034"}]}
    first = first_versions([(made, None)], NOW)
    with app.state.sessions.begin() as session:
        [(with_first, outcome)] = put_resources(session, [(made, None)], NOW, first)
        [(without, _)] = put_resources(session, [(plain, None)], NOW)
    assert outcome == "created" and with_first is first[("Patient", "ahead")].full
    assert {k: v for k, v in with_first.items() if k not in ("id", "identifier")} == {
        k: v for k, v in without.items() if k not in ("id", "identifier")
    }
    with app.state.sessions() as session:
        assert get_resource(session, "Patient", "ahead") == with_first
    # once stored, a first version made ahead no longer applies: the transaction works out version 2
    changed = {**made, "gender": "female"}
    stale = first_versions([(changed, None)], NOW + timedelta(minutes=1))
    with app.state.sessions.begin() as session:
        [(updated, outcome)] = put_resources(session, [(changed, None)], NOW + timedelta(minutes=1), stale)
    assert outcome == "updated" and updated["meta"]["versionId"] == "2" and updated is not stale[("Patient", "ahead")].full


def test_migrating_twice_is_harmless(app: Any) -> None:
    from gateway.platform.store.db import migrate

    migrate(app.state.engine)
    migrate(app.state.engine)


def _backend_pid(engine: Any) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(pid: int) -> None:
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        assert connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()
    admin.dispose()


@contextmanager
def _pooled_connection_killed(pg_url: str, monkeypatch: Any, ping_after_idle: float) -> Iterator[tuple[Any, int]]:
    """An engine whose one pooled connection's server backend was just terminated, and that backend's pid."""
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", ping_after_idle)
    engine = db.make_engine(pg_url)
    try:
        pid = _backend_pid(engine)
        _terminate(pid)
        time.sleep(0.1)
        yield engine, pid
    finally:
        engine.dispose()


def test_a_postgresql_connection_dropped_while_idle_in_the_pool_is_replaced_before_use(pg_url: str, monkeypatch: Any) -> None:
    """A server restart or a dropped connection during a quiet spell costs no request: the idle connection is pinged
    on checkout, fails, and a new one is used."""
    with _pooled_connection_killed(pg_url, monkeypatch, ping_after_idle=0.05) as (engine, pid):
        assert _backend_pid(engine) != pid  # no error: the pool replaced the dead connection


def test_a_connection_used_a_moment_ago_is_not_pinged_and_the_next_checkout_gets_a_new_one(pg_url: str, monkeypatch: Any) -> None:
    """The other side of not pinging on every checkout: a connection that dies within a moment of its last use fails
    its next statement; SQLAlchemy then invalidates the pool, so the next checkout (a retried transaction) works."""
    with _pooled_connection_killed(pg_url, monkeypatch, ping_after_idle=60.0) as (engine, pid):
        with pytest.raises(OperationalError), engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        assert _backend_pid(engine) != pid


def _rows_read(connection: Any) -> int:
    """Rows of `resources` this connection has read by any scan, as far as its counters not yet sent to PostgreSQL's
    statistics hold them (`pg_stat_xact_user_tables`): compare two readings in one transaction."""
    query = text("SELECT seq_tup_read + coalesce(idx_tup_fetch, 0) FROM pg_stat_xact_user_tables WHERE relname = 'resources'")
    return int(connection.execute(query).scalar_one())


def test_a_connection_opened_on_an_empty_store_still_locks_a_referrals_rows_by_key_as_the_store_grows(pg_url: str) -> None:
    """A gateway started on a new database: psycopg prepares the locking read once it has run it five times, and
    PostgreSQL's default then keeps a generic plan made while the table was empty (a scan of every row of the types
    asked for), for the life of the pooled connection. Each statement is planned for its own values instead
    (`db.PLAN_CACHE_MODE`), so a referral's locking read stays a lookup by key however many resources are stored."""
    empty_postgres(pg_url)
    db.migrate(engine := db.make_engine(pg_url))
    referral = [("Task", "t"), ("Patient", "p"), ("Encounter", "e"), ("ServiceRequest", "s"), ("CarePlan", "c")]
    try:
        with engine.connect() as connection:
            session = db.make_sessionmaker(engine)(bind=connection)
            for n in range(15):  # prepared after 5 runs; PostgreSQL weighs a generic plan after 5 more
                with session.begin():
                    put_resources(session, [({"resourceType": t, "id": f"{i}-{n}"}, None) for t, i in referral], NOW)
            grown = "INSERT INTO resources (resource_type, id, version_id, last_updated, content) SELECT t, md5(g::text), 1, now(), '{}'"
            with connection.begin():
                connection.execute(text(f"{grown} FROM unnest(ARRAY['Task', 'Patient', 'Encounter']) t, generate_series(1, 4000) g"))
            with session.begin():
                before = _rows_read(connection)
                put_resources(session, [({"resourceType": t, "id": f"{i}-new"}, None) for t, i in referral], NOW)
                assert _rows_read(connection) - before <= len(referral)  # was 12,075: every Task, Patient and Encounter
    finally:
        engine.dispose()
