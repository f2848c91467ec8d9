"""The store: migrations match the models, versions count up, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from gateway.store.models import Base
from gateway.store.repo import get_resource, put_resource
from tests.conftest import NOW


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


def test_migrating_twice_is_harmless(app: Any) -> None:
    from gateway.store.db import migrate

    migrate(app.state.engine)
    migrate(app.state.engine)
