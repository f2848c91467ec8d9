"""The CAS queue at scale, over HTTP: pages in CAS-02 order with `next` links, and the CAS-16 summary's counts, both
answered from indexed columns (a stored case's JSON is never read for them); Task sort keys each have an index."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Table, create_engine, insert, text

from gateway.api.app import create_app
from gateway.cas.queue_summary import RISK_SYSTEM, risk_level_observation
from gateway.platform.store.db import make_engine, migrate
from gateway.platform.store.models import ResourceRow, TokenRow
from gateway.platform.store.repo import sortable_task_params
from tests.conftest import ALL_SCOPES, NOW, PG_ADMIN_URL, add_test_client, bearer, fixture_json, gateway_settings, issues, task_of
from tests.test_cas_operations import op


def nhs_number(n: int) -> str:
    """A synthetic 999 NHS number with a valid check digit (modulus 11)."""
    for k in range(n, n + 20):
        digits = f"999{k:06d}"
        check = 11 - sum(int(d) * w for d, w in zip(digits, range(10, 1, -1), strict=True)) % 11
        if check != 10:
            return digits + str(check % 11)
    raise AssertionError("no valid number")


def case(client, n: int, call_time: str, birth_date: str = "1988-04-12") -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """A BNSSG option 2 case (a 6-hour callback, CAS-03) for its own patient, called at `call_time` (UTC, on NOW's day)."""
    body = fixture_json("option2-standard.case.json")
    body["case_id"] = f"NHS111-BNSSG-PAGING-{n:04d}"
    body["call_time"] = f"2026-11-23T{call_time}:00+00:00"
    body["patient"] = {**body["patient"], "nhs_number": nhs_number(100 * n), "birth_date": birth_date}
    response = client.post("/ingest/nhs111", content=json.dumps(body))
    assert response.status_code == 201, response.text
    return task_of(response.json())


def test_the_queue_comes_in_pages_in_breach_order_each_with_a_next_link_to_the_rest_CAS_02(client, clock) -> None:
    """CAS-02: breached cases first, most overdue first, then by time to breach; the same order page after page."""
    calls = ["10:00", "08:30", "11:00", "09:00", "08:30"]  # breach 6 h later: 16:00, 14:30, 17:00, 15:00, 14:30
    tasks = [case(client, n, at) for n, at in enumerate(calls)]
    clock.set(NOW.replace(hour=14, minute=45))  # the two 14:30 cases breached 15 min ago
    pages, url = [], "/queue?service=bnssg&_count=2"
    while url:
        page = client.get(url)
        assert page.status_code == 200, page.text
        pages.append(page.json())
        url = page.json()["link"].get("next")
    assert [len(p["entries"]) for p in pages] == [2, 2, 1] and {p["total"] for p in pages} == {5}
    assert pages[0]["link"]["next"] == "http://testserver/queue?service=bnssg&_count=2&_offset=2"
    entries = [e for p in pages for e in p["entries"]]
    assert [e["position"] for e in entries] == [1, 2, 3, 4, 5]
    assert [e["breach_time"] for e in entries] == [f"2026-11-23T{t}:00Z" for t in ("14:30", "14:30", "15:00", "16:00", "17:00")]
    assert [e["breached"] for e in entries] == [True, True, False, False, False]
    assert [e["breach_status"] for e in entries] == ["red", "red", "amber", "green", "green"]  # CAS-09
    assert [e["time_to_breach"] for e in entries] == ["-PT15M", "-PT15M", "PT15M", "PT1H15M", "PT2H15M"]
    assert sorted(e["task"] for e in entries) == sorted(f"Task/{t['id']}" for t in tasks)
    first = entries[0]
    assert first["service"] == "bnssg" and first["patient"].startswith("Patient/") and first["priority"] == tasks[1]["priority"]
    whole = client.get("/queue", params={"service": "bnssg"}).json()  # the default page holds them all
    assert whole["entries"] == entries and "next" not in whole["link"] and whole["count"] == whole["total"] == 5


def test_a_closed_case_leaves_the_queue_and_its_count(client) -> None:
    """CAS-02: the queue is the open cases; a case closed by a registered practitioner (CAS-13) is no longer on it."""
    tasks = [case(client, n, "09:00") for n in range(3)]
    done = op(client, tasks[0]["id"], "end-assessment", practitioner="Practitioner R", registered=True, notes="Seen.")
    assert done.status_code == 200, done.text
    queue = client.get("/queue", params={"service": "bnssg", "_count": "1"}).json()
    assert queue["total"] == 2 and queue["count"] == 1
    assert f"Task/{tasks[0]['id']}" not in [e["task"] for e in client.get("/queue").json()["entries"]]


def test_a_queue_page_size_outside_0_to_200_is_refused_400_naming__count(client) -> None:
    case(client, 1, "09:00")
    for bad in ("201", "-1", "ten"):
        refused = client.get("/queue", params={"_count": bad})
        assert refused.status_code == 400, refused.text
        ((_, element, words),) = issues(refused.json())
        assert element == "_count" and "0 to 200" in words
    counted = client.get("/queue", params={"_count": "0"}).json()  # how many, without a page
    assert counted["total"] == 1 and counted["entries"] == [] and "next" not in counted["link"]


def test_the_queue_and_its_summary_answer_without_reading_any_case_or_patient_whole(client, app) -> None:
    """The queue and summary read indexed columns only: even with every stored resource's JSON unreadable they answer
    (before, each open case and its patient were read and parsed: seconds for a region with a long history)."""
    case(client, 1, "09:00", birth_date="2010-01-01")
    with app.state.sessions.begin() as session:
        session.execute(text("UPDATE resources SET content = 'not JSON'"))
    queue = client.get("/queue", params={"service": "bnssg"})
    assert queue.status_code == 200, queue.text
    assert queue.json()["entries"][0]["breach_time"] == "2026-11-23T15:00:00Z"
    summary = client.get("/queue/summary", params={"service": "bnssg"})
    assert summary.status_code == 200, summary.text
    assert summary.json()["evidence"]["open_cases"] == 1 and summary.json()["evidence"]["extreme_ages_waiting"] == 1


def test_the_summary_counts_unallocated_urgent_cases_extremes_of_age_and_recent_worsening_calls_CAS_16(client, clock) -> None:
    """CAS-16 evidence from the open cases alone: Urgent CN Review cases with no suitability set (CAS-07), patients under
    18 or over 80 (rule file), CAS-10 calls within 6 h; a closed case and another service's cases are not counted."""
    young = case(client, 1, "09:00", birth_date="2008-11-24")  # 17 today (18 tomorrow)
    adult = case(client, 2, "09:10", birth_date="2008-11-23")  # 18 today
    old = case(client, 3, "09:20", birth_date="1945-11-24")  # 80 today: not over 80
    case(client, 4, "09:30", birth_date="1945-11-23")  # 81 today
    closed = case(client, 5, "09:40", birth_date="1930-01-01")
    assert op(client, closed["id"], "end-assessment", practitioner="R", registered=True, notes="Seen.").status_code == 200
    for task in (young, adult, old):  # CAS-10: a call finds new concern: Urgent CN Review
        found = op(client, task["id"], "record-contact-attempt", practitioner="CH", kind="safety-call", outcome="new-concern")
        assert found.status_code == 200, found.text
    assert op(client, adult["id"], "cn-review", practitioner="CN", suitability="registered").status_code == 200  # allocated
    summary = client.get("/queue/summary", params={"service": "bnssg"}).json()
    assert summary["evidence"] == {
        "open_cases": 4,
        "breached": 0,
        "black": 0,
        "urgent_cn_review_not_allocated": 2,
        "extreme_ages_waiting": 2,
        "worsening_calls": 3,
    }
    assert summary["by_classification"] == {"(blank)": 1, "Urgent CN Review": 3}
    assert summary["by_breach_status"] == {"green": 4, "amber": 0, "red": 0, "black": 0}
    clock.set(NOW + timedelta(hours=6, minutes=1))  # the calls were over 6 h ago; every case breached over 2 h ago (15:00..15:30)
    later = client.get("/queue/summary", params={"service": "bnssg"}).json()
    assert later["evidence"]["worsening_calls"] == 0 and later["by_breach_status"] == {"green": 0, "amber": 0, "red": 0, "black": 4}
    assert client.get("/queue/summary", params={"service": "bsw"}).json()["evidence"]["open_cases"] == 0


def test_every_task_sort_key_has_an_index_in_that_order() -> None:
    """Sorted Task searches read an index, not every Task: an index on (type, `_sort` key, id) for every key."""
    indexes = {tuple(c.name for c in index.columns) for index in cast(Table, ResourceRow.__table__).indexes}
    columns = {"authored-on": "authored_on", "_lastUpdated": "last_updated", "priority": "priority", "status": "status"}
    for key in sortable_task_params():
        column = columns.get(key, "breach_at" if key == "breach-time" else key)
        assert ("resource_type", column, "id") in indexes, key


def test_sorted_task_searches_and_the_queue_read_their_indexes_on_sqlite(app, client) -> None:
    """The query plans SQLite makes for them. With no statistics (the gateway never runs ANALYZE) SQLite chooses by
    the query's shape alone, so the plans here are the plans at any size: sorted searches read an index in order,
    and every read of the queue and its summary reads an open-queue index, never every Task of a service."""
    case(client, 1, "09:00")
    engine = app.state.sessions.kw["bind"]
    if engine.dialect.name != "sqlite":
        return  # PostgreSQL's choice depends on the table's size: the benchmark (bench/queue.py) measures it at 100,000 Tasks
    seen: list[tuple[str, Any, bool]] = []
    from sqlalchemy import event

    def remember(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        queue_read = "'on-hold')" in statement  # the open-case condition (queue_index.open_cases)
        if "FROM resources" in statement and ("ORDER BY" in statement or queue_read):
            seen.append((statement, parameters, queue_read))

    event.listen(engine, "before_cursor_execute", remember)
    try:
        for key in sortable_task_params():
            assert client.get("/fhir/Task", params={"_sort": key, "_count": "5"}).status_code == 200
        for path in ("/queue?service=bnssg", "/queue", "/queue/summary?service=bnssg"):
            assert client.get(path).status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", remember)
    assert len(seen) >= len(sortable_task_params()) + 7  # the sorts; two pages and their counts; counts, calls, level
    with engine.connect() as connection:
        for statement, parameters, queue_read in seen:
            plan = " | ".join(row[-1] for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters))
            assert "USING INDEX ix_" in plan or "USING COVERING INDEX ix_" in plan, (statement, plan)
            assert "TEMP B-TREE FOR ORDER BY" not in plan, (statement, plan)
            if queue_read:
                assert "INDEX ix_resources_open_queue" in plan and "ix_resources_queue " not in plan, (statement, plan)


def test_the_open_queue_indexes_hold_exactly_the_cases_the_queue_reads() -> None:
    """The partial indexes' predicate (models.OPEN_CAS_CASE) and the queue's condition (queue_index.open_cases) name
    the same statuses: were they to drift apart, the queue would read past its indexes, or miss cases."""
    from sqlalchemy.dialects import postgresql

    from gateway.platform.store.models import OPEN_CAS_CASE
    from gateway.platform.store.queue_index import open_cases
    from gateway.platform.store.repo import ACTIVE_TASK_STATUSES

    assert OPEN_CAS_CASE.endswith("status IN (" + ", ".join(f"'{s}'" for s in ACTIVE_TASK_STATUSES) + ")")
    written = str(open_cases(ResourceRow.__table__).compile(dialect=postgresql.dialect()))
    assert written.replace("resources.", "").replace("(", "").replace(")", "") == OPEN_CAS_CASE.replace("(", "").replace(")", "")


@pytest.fixture(params=["sqlite", "postgresql"])
def new_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of its own (the migrations are walked from the start)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'older.db'}"
        return
    name = f"iap_test_older_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_a_store_from_before_the_queue_indexes_shows_its_evidence_once_migrated_CAS_16(new_database: str, clock: Any) -> None:
    """Migration 0006 fills in what the summary now counts by, from the JSON stored before it: a CN's suitability on a
    case (CAS-07), a patient's birth date, a CAS-10 call's rule, and the service of a confirmed risk level."""
    engine = make_engine(new_database)
    migrate(engine, "0005")
    breach, young, adult = NOW + timedelta(hours=3), "young-patient", "adult-patient"
    urgent = {"coding": [{"system": "x", "code": "urgent-cn-review"}]}
    suitable = [{"coding": [{"system": "x", "code": "registered"}]}]
    call = {"resourceType": "Provenance", "id": "call", "reason": [{"coding": [{"system": "x", "code": "CAS-10"}]}]}
    level = risk_level_observation("bnssg", {"level": "low", "because": ["quiet"]}, "medium", "CN Smith", None, NOW)
    rows: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = [
        ("Patient", young, {"birthDate": "2010-01-01"}, {}),
        ("Patient", adult, {"birthDate": "1980-01-01"}, {}),
        ("Task", "unallocated", {"businessStatus": urgent}, {"subject_id": young}),
        ("Task", "allocated", {"businessStatus": urgent, "performerType": suitable}, {"subject_id": adult}),
        ("Provenance", "call", call, {"effective_at": NOW - timedelta(hours=1)}),
        ("Observation", level["id"], level, {"effective_at": NOW}),
    ]
    with engine.begin() as connection:
        for rtype, rid, body, columns in rows:
            task: dict[str, Any] = {"status": "ready", "business_status": "urgent-cn-review", "service_id": "bnssg", "breach_at": breach}
            values: dict[str, Any] = {"resource_type": rtype, "id": rid, "version_id": 1, "last_updated": NOW, "content": json.dumps(body)}
            connection.execute(insert(ResourceRow), values | (task if rtype == "Task" else {}) | columns)
        tokens = [("Provenance", "call", "target", "Task/unallocated"), ("Observation", level["id"], "code", "queue-risk-level")]
        for rtype, rid, param, code in tokens:
            system = RISK_SYSTEM if param == "code" else ""
            values = {"resource_type": rtype, "resource_id": rid, "param": param, "system": system, "code": code}
            connection.execute(insert(TokenRow), values)
    engine.dispose()
    app = create_app(gateway_settings(new_database), clock)  # migrates to the head, as the prestart step does
    try:
        with TestClient(app, raise_server_exceptions=False, headers=bearer(add_test_client(app, ALL_SCOPES))) as client:
            summary = client.get("/queue/summary", params={"service": "bnssg"}).json()
    finally:
        app.state.engine.dispose()
    assert summary["evidence"] | {"breached": None, "black": None} == {
        "open_cases": 2,
        "breached": None,
        "black": None,
        "urgent_cn_review_not_allocated": 1,
        "extreme_ages_waiting": 1,
        "worsening_calls": 1,
    }
    assert summary["confirmed_risk_level"]["level"] == "medium" and summary["confirmed_risk_level"]["by"] == "CN Smith"
