"""Scale-out: two real `iap-gateway serve` processes on one PostgreSQL behave as one gateway.

Copies of one message split across both instances still make exactly one Task (flat JSON: one reply
for all; BaRS: one 200, the rest 409), and both instances' safety-call workers, ticking at once,
create each safety call once (CAS-09). A client created once is honoured by both; revoking it stops
it on both at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import PG_ADMIN_URL, ROOT, bearer, fixture_bytes, free_port
from tests.test_cli import wait_healthy

COPIES = 20
CLI = [sys.executable, "-m", "gateway.cli"]


@pytest.fixture
def shared_db() -> Iterator[str]:
    name = f"iap_scale_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql+psycopg://", "postgresql://") + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


@pytest.fixture
def two_instances(shared_db: str, tmp_path: Path) -> Iterator[tuple[list[str], str, dict[str, str]]]:
    """Two gateways on the shared database (each with its safety-call worker ticking every second); their URLs, a key, the env."""
    env = {**os.environ, "DATABASE_URL": shared_db, "IAP_MLLP_PORT": "0", "IAP_TICK_SECONDS": "1", "IAP_ENVIRONMENT": "production"}
    added = _cli(env, "clients", "add", "scale-test", "--scopes", "ingest:nhs111 fhir:read cas:operate")
    assert added.returncode == 0, added.stderr
    key = added.stdout.strip()
    processes, urls, logs = [], [], []
    try:
        for index in range(2):
            port = free_port()
            log = (tmp_path / f"gateway-{index}.log").open("wb")
            logs.append(log)
            processes.append(subprocess.Popen([*CLI, "serve", "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=log))
            urls.append(f"http://127.0.0.1:{port}")
        for url in urls:
            wait_healthy(int(url.rsplit(":", 1)[1]))
        yield urls, key, env
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
        for log in logs:
            log.close()


def _split_burst(urls: list[str], key: str, path: str, body: bytes, headers: dict[str, str] | None = None) -> list[httpx.Response]:
    """COPIES identical requests released at once, alternating between the instances."""
    barrier = threading.Barrier(COPIES)

    def one(index: int) -> httpx.Response:
        with httpx.Client(timeout=60, headers=bearer(key) | (headers or {})) as http:
            barrier.wait()
            return http.post(f"{urls[index % len(urls)]}{path}", content=body)

    with ThreadPoolExecutor(COPIES) as pool:
        return list(pool.map(one, range(COPIES)))


def _column(url: str, sql: str) -> list[str]:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            return [str(value) for value in conn.execute(text(sql)).scalars()]
    finally:
        engine.dispose()


def _count(url: str, sql: str) -> int:
    return int(_column(url, sql)[0])


def test_two_instances_make_one_task_from_copies_split_between_them(two_instances, shared_db: str) -> None:
    urls, key, _ = two_instances
    flat = _split_burst(urls, key, "/ingest/nhs111", fixture_bytes("option2-red-flag.case.json"))
    assert {r.status_code for r in flat} == {201} and len({r.text for r in flat}) == 1
    request = {"X-Request-Id": str(uuid.uuid4()), "X-Correlation-Id": str(uuid.uuid4())}
    bars = _split_burst(urls, key, "/fhir/$process-message", fixture_bytes("bars-dx13-self-harm-flag.bundle.json"), request)
    assert sorted(r.status_code for r in bars) == [200] + [409] * (COPIES - 1)
    # CAS queue Tasks only: the instances' workers tick every second and may add a safety call (CAS-09) for a case
    # whose interval has come round on the wall clock
    case_tasks = "resource_type = 'Task' AND content NOT LIKE '%\"code\":\"safety-call\"%'"
    assert _count(shared_db, f"SELECT count(*) FROM resources WHERE {case_tasks}") == 2
    assert _count(shared_db, "SELECT count(*) FROM inbound_messages") == 2
    # each change audited once, with it; each re-send audited as answered from the store
    audited = "SELECT count(DISTINCT event_id) FROM audit_entities WHERE reference IN (SELECT 'Task/' || task_id FROM inbound_messages)"
    assert _count(shared_db, audited) == 2
    assert _count(shared_db, "SELECT count(*) FROM audit_events WHERE content LIKE '%re-send answered from the store%'") == COPIES - 1
    task_ids = _column(shared_db, "SELECT task_id FROM inbound_messages")
    assert len(set(task_ids)) == 2
    for url in urls:  # both instances answer reads of what either stored
        for task_id in task_ids:
            assert httpx.get(f"{url}/fhir/Task/{task_id}", headers=bearer(key), timeout=10).status_code == 200


def _safety_call_intervals(url: str) -> list[str]:
    """The due interval (executionPeriod.start) of each requested safety-call Task in the store."""
    calls = "SELECT content FROM resources WHERE resource_type = 'Task' AND content LIKE '%\"safety-call\"%' AND status = 'requested'"
    return sorted(json.loads(content)["executionPeriod"]["start"] for content in _column(url, calls))


def test_two_instances_workers_ticking_at_once_create_each_safety_call_once_CAS_09(two_instances, shared_db: str) -> None:
    urls, key, env = two_instances
    reply = httpx.post(f"{urls[0]}/ingest/nhs111", content=fixture_bytes("online-dx92-summer.case.json"), headers=bearer(key), timeout=30)
    assert reply.status_code == 201  # breached months ago: red, a safety call due now
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not _safety_call_intervals(shared_db):
        time.sleep(0.2)
    time.sleep(3)  # several more ticks of both workers
    # one call per due interval (CAS-09); the workers tick on the wall clock, so a second one is right only if the
    # hour's interval came round meanwhile, and is then for the next interval, never a copy
    intervals = _safety_call_intervals(shared_db)
    assert 1 <= len(intervals) <= 2 and len(set(intervals)) == len(intervals)
    # and `iap-gateway tick` run twice at once (e.g. from two schedulers) for a later interval: one more call, not two
    later = ["tick", "--now", "2026-12-31T12:00:00Z"]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: _cli(env, *later), range(2)))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    created = sorted(int(r.stderr.split("tick: ", 1)[1].split(" ", 1)[0]) for r in results)
    after = _safety_call_intervals(shared_db)
    assert created == [0, 1] and "2026-12-31T12:00:00Z" >= after[-1] > intervals[-1] and len(set(after)) == len(after)


def test_a_client_revoked_once_is_refused_by_both_instances(two_instances) -> None:
    urls, key, env = two_instances
    assert all(httpx.get(f"{url}/queue", headers=bearer(key), timeout=10).status_code == 200 for url in urls)
    assert _cli(env, "clients", "revoke", "scale-test").returncode == 0
    assert all(httpx.get(f"{url}/queue", headers=bearer(key), timeout=10).status_code == 401 for url in urls)
