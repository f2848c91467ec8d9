"""The CAS queue and sorted Task searches as history grows: latency on an empty store and with N stored referrals.

For each backend, on a new store, with the gateway served as in production (`iap-gateway serve`, loopback):
1. measure the requests below on the empty store (one client connection, one request after another);
2. load N referrals (default 100,000) as the gateway stores them: each NHS 111 case mapped by the gateway's own
   intake (`gateway.cas.intake.decide`, `fhir_mapping.cas_referral.map_cas_referral`: Task, Patient, ServiceRequest and
   the rest, with its rule-trace Provenance) and written with the gateway's write function (`put_resources`,
   500 referrals a transaction). Every case has its own patient; call times are spread over the past year and
   those cases are closed (`completed`), as a region's history is; one in `--open-every` is open, called in the
   last five hours (breached, amber and green cases on the queue). PostgreSQL is then vacuumed and analysed, as
   its autovacuum would after such growth (SQLite: nothing; the gateway never runs ANALYZE);
3. measure the same requests again.

Latency is from sending a request to reading its whole reply (http.client, keep-alive), after a warm-up.
"""

from __future__ import annotations

import http.client
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench import ingest

REPO = Path(__file__).resolve().parent.parent
REQUESTS = {
    "queue": "/queue?service=bnssg&_count=50",
    "summary": "/queue/summary?service=bnssg",
    "tasks": "/fhir/Task?_sort=breach-time&_count=20",
}
TEMPLATES = ("option2-standard.case.json", "third-party-bsw.case.json", "option1-dx12.case.json", "option2-red-flag.case.json")
BATCH = 500


@dataclass
class QueueResult:
    backend: str
    tasks: int  # stored referrals (one Task each)
    open_cases: int
    request: str
    n: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    failures: dict[str, int] = field(default_factory=dict)


def nhs_number(n: int) -> str:
    """A synthetic NHS number (999 range) with a valid modulus 11 check digit, its own for each patient `n` < 1,000,000."""
    for k in range(10 * n, 10 * n + 10):  # at most one in eleven has no check digit: some k of ten has one
        digits = f"999{k:06d}" if k < 10**6 else f"99{k:07d}"  # the first 100,000 patients in the 999 range
        check = 11 - sum(int(d) * w for d, w in zip(digits, range(10, 1, -1), strict=True)) % 11
        if check != 10:
            return digits + str(check % 11)
    raise ValueError(n)


def load(database_url: str, tasks: int, open_every: int, now: datetime) -> int:
    """Store `tasks` referrals as the gateway does (see the module's docstring); the number of open cases."""
    from sqlalchemy import func, select

    from adapters.nhs111_case import parse_nhs111_case
    from fhir_mapping.cas_referral import map_cas_referral
    from gateway.cas.cases import provenance
    from gateway.cas.intake import decide, plan_for
    from gateway.cas.rules.schema import load_rules
    from gateway.platform.store.db import make_engine, make_sessionmaker, write_transaction
    from gateway.platform.store.models import ResourceRow
    from gateway.platform.store.queue_index import open_cases
    from gateway.platform.store.repo import put_resources

    registry = load_rules()
    templates = [json.loads((REPO / "fixtures" / "nhs111" / name).read_bytes()) for name in TEMPLATES]
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    opened = 0
    try:
        for start in range(0, tasks, BATCH):
            writes: list[tuple[dict[str, Any], str | None]] = []
            for i in range(start, min(start + BATCH, tasks)):
                is_open = i % open_every == 0
                called = now - (timedelta(minutes=(i * 7) % 300) if is_open else timedelta(days=1 + i % 364, minutes=i % 1440))
                case = templates[i % len(templates)] | {"case_id": f"NHS111-BENCH-{i:07d}", "call_time": called.isoformat()}
                case["patient"] = case["patient"] | {"nhs_number": nhs_number(i)}
                referral = parse_nhs111_case(json.dumps(case).encode())
                decision = decide(referral, registry)
                service_id = decision.rules.service.id
                resources = map_cas_referral(referral, plan_for(decision), called).as_json()
                task = next(r for r in resources if r["resourceType"] == "Task")
                if not is_open:
                    task["status"] = "completed"
                opened += is_open
                trace = provenance(task, "intake", "IAP gateway intake", decision.rule_ids, "; ".join(decision.reasons), called)
                writes += [(r, None if r["resourceType"] == "Patient" else service_id) for r in [*reversed(resources), trace]]
            with write_transaction(sessions) as session:
                put_resources(session, writes, now)
            if start and start % 20_000 == 0:
                print(f"    stored {start} referrals ...", file=sys.stderr, flush=True)
        with sessions() as session:  # what the store holds, not what was meant: the figures are for these
            stored = session.execute(select(func.count()).select_from(ResourceRow).where(open_cases(ResourceRow.__table__))).scalar_one()
        if stored != opened:
            raise SystemExit(f"the store holds {stored} open cases, not the {opened} loaded")
        if engine.dialect.name == "postgresql":
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                connection.exec_driver_sql("VACUUM ANALYZE")
    finally:
        engine.dispose()
    return opened


def _client_key(database_url: str) -> str:
    """A client that reads the queue and searches FHIR resources, in the migrated store: its API key."""
    from gateway.platform.security.clients import add_client
    from gateway.platform.store.db import make_engine, make_sessionmaker, migrate

    engine = make_engine(database_url)
    try:
        migrate(engine)
        with make_sessionmaker(engine).begin() as session:
            _, key = add_client(session, "bench-queue", frozenset({"cas:operate", "fhir:read"}), datetime.now(UTC))
        return key or ""
    finally:
        engine.dispose()


def timed(base: str, key: str, path: str, n: int, warmup: int) -> tuple[list[float], dict[str, int]]:
    """`n` requests of `path` one after another on one connection, after `warmup` untimed: milliseconds, and failures."""
    address = urlsplit(base)
    connection = http.client.HTTPConnection(address.hostname or "127.0.0.1", address.port, timeout=30)
    headers = {"Authorization": f"Bearer {key}", "Accept": "application/json"}
    times: list[float] = []
    failures: dict[str, int] = {}
    try:
        for i in range(warmup + n):
            began = time.perf_counter()
            connection.request("GET", path, headers=headers)
            reply = connection.getresponse()
            reply.read()
            took = (time.perf_counter() - began) * 1000
            if reply.status != 200:
                failures[f"HTTP {reply.status}"] = failures.get(f"HTTP {reply.status}", 0) + 1
            if i >= warmup:
                times.append(took)
    finally:
        connection.close()
    return times, failures


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def measure(backend: str, pg_url: str, tasks: int, open_every: int, n: int, warmup: int, logs: Path) -> list[QueueResult]:
    results = []
    with ingest.new_store(backend, pg_url) as database_url:
        key = _client_key(database_url)
        with ingest.server("gateway", database_url, 1, logs / f"{backend}-queue.log") as (base, _):

            def run(stored: int, opened: int) -> None:
                for name, path in REQUESTS.items():
                    times, failures = timed(base, key, path, n, warmup)
                    p50, p99 = statistics.median(times), _percentile(times, 0.99)
                    results.append(QueueResult(backend, stored, opened, name, len(times), p50, p99, max(times), failures))

            run(0, 0)
            print(f"  queue: {backend}, storing {tasks} referrals ...", file=sys.stderr, flush=True)
            began = time.monotonic()
            opened = load(database_url, tasks, open_every, datetime.now(UTC))
            print(f"  queue: {backend}, stored in {time.monotonic() - began:.0f} s; measuring ...", file=sys.stderr, flush=True)
            run(tasks, opened)
    return results


def run_all(backends: list[str], pg_url: str, tasks: int, open_every: int, n: int, warmup: int) -> list[QueueResult]:
    with tempfile.TemporaryDirectory(prefix="iap-bench-queue-") as folder:
        return [r for backend in backends for r in measure(backend, pg_url, tasks, open_every, n, warmup, Path(folder))]
