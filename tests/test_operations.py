"""Operations: liveness, readiness (database, migrations, rule files), Prometheus metrics, request limits and timeouts."""

from __future__ import annotations

import socket
from datetime import timedelta

import httpx
import respx
from alembic import command
from sqlalchemy import create_engine

from gateway.cas.rules.schema import RuleRegistry
from gateway.platform.store.db import alembic_config
from tests.conftest import ALL_SCOPES, NOW, add_test_client, bars_headers, fixture_bytes, free_port, issues, metric_value, serving
from tests.letter_helpers import completed_case, make_deliverer, outbox, write_routing

RECEIVER = "https://gp-system.example.test/fhir"


def test_liveness_needs_nothing_and_readiness_reports_the_rule_sets(anonymous) -> None:
    assert anonymous.get("/healthz").json() == {"status": "ok"}
    ready = anonymous.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert {label.split(" ")[0] for label in ready.json()["rule_sets"]} >= {"bnssg", "bsw", "north-essex-mid", "rdash-rotherham"}


def test_not_ready_when_the_database_is_unreachable(app, anonymous) -> None:
    working = app.state.engine
    port = free_port()  # nothing listens on it
    app.state.engine = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{port}/none", connect_args={"connect_timeout": 2})
    try:
        response = anonymous.get("/readyz")
    finally:
        app.state.engine.dispose()
        app.state.engine = working
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    ((severity, element, diagnostics),) = issues(response.json())
    assert element == "database" and "not reachable" in diagnostics
    assert response.json()["issue"][0]["details"]["coding"][0]["code"] == "REC_SERVICE_UNAVAILABLE"


def test_not_ready_until_the_migrations_are_at_head(app, anonymous) -> None:
    config = alembic_config()
    with app.state.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0002")
    response = anonymous.get("/readyz")
    assert response.status_code == 503
    ((_, element, diagnostics),) = issues(response.json())
    assert element == "database.schema" and "iap-gateway migrate" in diagnostics and "0002" in diagnostics
    from gateway.platform.store.db import migrate

    migrate(app.state.engine)
    assert anonymous.get("/readyz").status_code == 200


def test_not_ready_without_rule_files(app, anonymous) -> None:
    loaded = app.state.registry
    app.state.registry = RuleRegistry([])
    try:
        response = anonymous.get("/readyz")
    finally:
        app.state.registry = loaded
    assert response.status_code == 503 and issues(response.json())[0][1] == "rules"


def test_metrics_count_messages_by_source_and_outcome_and_time_the_mapping(client, client_with, anonymous) -> None:
    before = client.get("/metrics").text
    body = fixture_bytes("option2-standard.case.json")
    client.post("/ingest/nhs111", content=body)
    client.post("/ingest/nhs111", content=body)  # re-sent
    client.post("/ingest/nhs111", content=b"{}")  # refused
    anonymous.post("/ingest/nhs111", content=body)  # unauthenticated
    bundle = fixture_bytes("bars-dx13-self-harm-flag.bundle.json")
    headers = bars_headers()
    client.post("/fhir/$process-message", content=bundle, headers=headers)
    client.post("/fhir/$process-message", content=bundle, headers=headers)  # 409 duplicate
    scraper = client_with({"metrics:read"})
    after = scraper.get("/metrics")
    assert after.status_code == 200 and after.headers["content-type"].startswith("text/plain; version=0.0.4")

    def grew(name: str, **labels: str) -> float:
        return metric_value(after.text, name, **labels) - metric_value(before, name, **labels)

    assert grew("iap_messages_total", source="nhs111", outcome="accepted") == 1
    assert grew("iap_messages_total", source="nhs111", outcome="duplicate") == 1
    assert grew("iap_messages_total", source="nhs111", outcome="refused") == 1
    assert grew("iap_messages_total", source="nhs111", outcome="unauthorised") == 1
    assert grew("iap_messages_total", source="bars", outcome="accepted") == 1
    assert grew("iap_messages_total", source="bars", outcome="duplicate") == 1
    assert grew("iap_mapping_duration_seconds_count", source="nhs111") == 2
    assert grew("iap_auth_refusals_total", reason="unauthenticated") == 1
    assert grew("iap_http_requests_total", route="/ingest/nhs111", method="POST", status="201") == 2
    assert metric_value(after.text, "iap_outbox_depth") == 0 and metric_value(after.text, "iap_outbox_oldest_age_seconds") == 0
    assert client_with(ALL_SCOPES - {"metrics:read", "admin"}).get("/metrics").status_code == 403


@respx.mock
def test_outbox_depth_age_and_deliveries_are_measured_and_each_delivery_is_audited(app, client, clock, tmp_path) -> None:
    """A letter waits 10 minutes (depth 1, age 600 s), then goes: depth 0, one `delivered` delivery, one Export AuditEvent."""
    respx.post(f"{RECEIVER}/Bundle").mock(return_value=httpx.Response(201, headers={"Location": f"{RECEIVER}/Bundle/1"}))
    completed_case(client)
    (row,) = outbox(client)
    clock.set(NOW + timedelta(minutes=10))
    waiting = client.get("/metrics").text
    assert metric_value(waiting, "iap_outbox_depth") == 1 and metric_value(waiting, "iap_outbox_oldest_age_seconds") == 600
    assert metric_value(waiting, "iap_outbox_rows", status="pending") == 1
    before = metric_value(waiting, "iap_deliveries_total", channel="fhir", outcome="delivered")
    worker = make_deliverer(app, clock, routing_file=write_routing(tmp_path, fhir_endpoints={"L81001": RECEIVER}))
    try:
        assert worker.deliver_once() == [(row["id"], "delivered")]
    finally:
        worker.close()
    after = client.get("/metrics").text
    assert metric_value(after, "iap_outbox_depth") == 0 and metric_value(after, "iap_outbox_oldest_age_seconds") == 0
    assert metric_value(after, "iap_outbox_rows", status="delivered") == 1
    assert metric_value(after, "iap_deliveries_total", channel="fhir", outcome="delivered") == before + 1
    events = client.get("/fhir/AuditEvent", params={"entity": row["letter"]}).json()["entry"]
    (export,) = [e["resource"] for e in events if e["resource"]["type"]["code"] == "110106"]
    assert export["outcome"] == "0" and export["outcomeDesc"].startswith("delivered")
    assert {"name": "fhir", "who": {"display": RECEIVER}, "requestor": False} in export["agent"]


def test_a_body_over_the_limit_is_refused_413_before_it_is_read(client) -> None:
    response = client.post("/ingest/nhs111", content=b"x" * 300_000)
    assert response.status_code == 413 and issues(response.json())[0][1] == "body"


def test_a_body_that_does_not_arrive_in_time_gets_408(settings, clock) -> None:  # type: ignore[no-untyped-def]
    from gateway.api.app import create_app

    app = create_app(settings.model_copy(update={"body_timeout_seconds": 0.5}), clock)
    key = add_test_client(app, ALL_SCOPES)
    try:
        with serving(app) as url, socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as sock:
            sock.settimeout(20)
            head = f"POST /ingest/nhs111 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Length: 500\r\n\r\n"
            sock.sendall(head.encode() + b'{"case_id": ')  # ... and then nothing more
            reply = b""
            while b"\r\n\r\n" not in reply:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
    finally:
        app.state.engine.dispose()
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]


def test_a_served_app_leaves_its_start_up_objects_out_of_the_collectors_scans(settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Each serve worker freezes what start-up made (gc.freeze), so the collector's full scans under load no longer
    walk the ~240,000 objects of the FHIR models and rule files (they held a worker 15-150 ms: bench/README.md)."""
    import gc

    from common.datetimes import _england_bank_holidays
    from gateway.api.app import served_app

    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("IAP_MLLP_PORT", "0")
    _england_bank_holidays.cache_clear()
    gc.unfreeze()
    try:
        app = served_app()
        frozen = gc.get_freeze_count()
        assert frozen > 100_000  # start-up's objects, the FHIR models first among them
        assert app.state.intake is not None
        assert _england_bank_holidays.cache_info().currsize == 1  # this year's calendar built before any request
        app.state.engine.dispose()
    finally:
        gc.unfreeze()  # the test process goes on collecting as before
