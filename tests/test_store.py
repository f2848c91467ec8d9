"""The store: migrations match the models, versions count up, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from gateway.store.models import Base
from gateway.store.repo import first_versions, get_resource, put_resource, put_resources
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
    from gateway.store.db import migrate

    migrate(app.state.engine)
    migrate(app.state.engine)
