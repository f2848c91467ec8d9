"""HTTP ingest under a fixed offered load, with wrk: the gateway's POST /ingest/nhs111 and a bare baseline.

For each backend (SQLite, PostgreSQL) and each target (the gateway, `iap-gateway serve`; the
bare FastAPI app of bench/bare_app.py, one insert per message), on a new empty store:
1. start the server (its own process group; `--workers`, the same for both targets),
2. warm up: the offered rate for a few seconds,
3. measure: the offered rate (default 200 req/s) for the run time (default 60 s): wrk with
   bench/paced_post.lua, open-loop pacing, every request a new message (its own case id),
4. saturate: closed loop (every connection sends again as soon as it has its reply) for a
   few seconds: the most the target takes,
5. stop the server, count the stored messages, drop the store.
Latency is wrk's: from sending a request to reading its reply. A request that could not be sent
on time (every connection busy) is counted as late; late requests mean the target fell behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
LUA = Path(__file__).resolve().parent / "paced_post.lua"
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432"
TARGETS = {
    "gateway": ("POST /ingest/nhs111", "/ingest/nhs111", "inbound_messages"),
    "bare": ("bare FastAPI, 1 insert", "/ingest", "bench_messages"),
}


@dataclass
class LoadResult:
    backend: str
    target: str
    offered: float
    seconds: float
    sent: int
    created: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    late: int
    late_max_ms: float
    failures: dict[str, int]
    stored: int
    server_cpu_ms_per_msg: float
    machine_busy: float  # share of both cores busy during the measured run: the target, PostgreSQL, wrk and anything else
    machine_steal: float = 0.0  # share of both cores' time taken by the host (other guests) during the measured run
    database_cpu_ms_per_msg: float | None = None  # PostgreSQL's client backends for the target's database, on this machine
    max_rate: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def achieved(self) -> float:
        return self.created / self.seconds if self.seconds else 0.0

    @property
    def ok(self) -> bool:
        return not self.failures and self.created == self.sent and not self.notes


def require_wrk() -> str:
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("the ingest benchmark needs wrk (HTTP load generator): apt-get install wrk")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def new_store(backend: str, pg_url: str) -> Iterator[str]:
    """An empty database: a SQLite file in a temp directory, or a new PostgreSQL database (dropped after)."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="iap-bench-") as folder:
            yield f"sqlite:///{folder}/bench.db"
        return
    from sqlalchemy import create_engine, text

    name = f"iap_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(_admin_url(pg_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{pg_url}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _admin_url(pg_url: str) -> str:
    """The server's `postgres` database, through psycopg: where databases are made and dropped, and backends listed."""
    return pg_url.replace("postgresql://", "postgresql+psycopg://", 1) + "/postgres"


def _count(database_url: str, table: str) -> int:
    from sqlalchemy import text

    from gateway.platform.store.db import make_engine

    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
    finally:
        engine.dispose()


def _prepare_bare(database_url: str) -> None:
    from bench.bare_app import metadata
    from gateway.platform.store.db import make_engine

    engine = make_engine(database_url)
    metadata.create_all(engine)
    engine.dispose()


def _bench_client(database_url: str) -> str:
    """A client allowed to submit NHS 111 referrals, in the gateway's store (migrated first): its API key.

    The bare endpoint is sent the same header, so both targets get the same request bytes."""
    from gateway.platform.security.clients import add_client
    from gateway.platform.store.db import make_engine, make_sessionmaker, migrate

    engine = make_engine(database_url)
    try:
        migrate(engine)
        with make_sessionmaker(engine).begin() as session:
            _, key = add_client(session, "bench", frozenset({"ingest:nhs111"}), datetime.now(UTC))
        return key or ""
    finally:
        engine.dispose()


def machine_ticks() -> tuple[int, int, int]:
    """(busy, total, steal) CPU ticks of the whole machine so far, from /proc/stat. Steal: time the hypervisor
    gave this machine's virtual CPUs to someone else while they had work (counted in busy too)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return sum(values) - values[3] - values[4], sum(values), values[7]


def busy_between(before: tuple[int, ...], after: tuple[int, ...]) -> float:
    return (after[0] - before[0]) / max(1, after[1] - before[1])


def steal_between(before: tuple[int, ...], after: tuple[int, ...]) -> float:
    return (after[2] - before[2]) / max(1, after[1] - before[1])


def _stat_fields(pid: int | str) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the process's name (state ppid pgrp ... utime(11) stime(12)); None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _group_cpu_seconds(pgid: int) -> float:
    """User + system CPU of every live process in the process group (from /proc)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(entry.name)) is not None and int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _database_cpu_seconds(pg_url: str, database_url: str) -> dict[int, float] | None:
    """CPU seconds so far of each PostgreSQL client backend connected to `database_url`'s database, from /proc: None
    for SQLite (in the server's own processes), and when the server is not on this machine (the backend serving this
    very query is no postgres process here). A backend that ended between the query and the read is left out: on a
    busy machine one may (a pool replacing a connection), and that used to cost the whole reading ('–')."""
    if not database_url.startswith("postgresql"):
        return None
    from sqlalchemy import create_engine, text

    admin = create_engine(_admin_url(pg_url))
    query = text("SELECT pid FROM pg_stat_activity WHERE datname = :name AND backend_type = 'client backend'")
    try:
        with admin.connect() as conn:
            pids = conn.execute(query, {"name": database_url.rsplit("/", 1)[1]}).scalars().all()
            if not _is_postgres(conn.execute(text("SELECT pg_backend_pid()")).scalar_one()):  # alive: this connection
                return None
            seconds = {}
            for pid in pids:
                if _is_postgres(pid) and (fields := _stat_fields(pid)) is not None:
                    seconds[int(pid)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            return seconds
    finally:
        admin.dispose()


def _is_postgres(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "postgres"
    except OSError:
        return False


@contextmanager
def server(target: str, database_url: str, workers: int, log: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    env = os.environ | {"DATABASE_URL": database_url, "IAP_MLLP_PORT": "0", "IAP_TICK_SECONDS": "0"}
    env.pop("IAP_CHECK_FHIR", None)  # check mode is for tests; the benchmark measures what production runs
    host = ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    if target == "gateway":
        command = [str(Path(sys.executable).parent / "iap-gateway"), "serve", *host]
    else:
        command = [sys.executable, "-m", "uvicorn", "bench.bare_app:create_app", "--factory", "--log-level", "warning", *host]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180  # a busy machine: the workers' imports and migrations take their turn
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    ended = "exited" if process.poll() is not None else "did not answer /healthz within 180 s"
                    tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
                    raise SystemExit(f"{target} did not start ({ended}); the end of its log ({log}):\n{tail}") from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()


def bodies_file(folder: Path) -> Path:
    """Flat NHS 111 cases, one per line, with @@ID@@ and @@NHS@@ where wrk puts each request's case id and patient."""
    path = folder / "bodies.jsonl"
    with path.open("w") as out:
        for fixture in sorted((REPO / "fixtures" / "nhs111").glob("*.case.json")):
            case = json.loads(fixture.read_bytes()) | {"case_id": "@@ID@@"}
            case["patient"]["nhs_number"] = "@@NHS@@"
            out.write(json.dumps(case) + "\n")
    return path


def wrk(url: str, bodies: Path, rate: float, seconds: float, connections: int, tag: str, first_patient: int, key: str) -> dict[str, Any]:
    """One wrk run; rate 0 = closed loop (as fast as replies come). Patients are numbered on from `first_patient`."""
    command = [require_wrk(), "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s", "-s", str(LUA), url]
    arguments = ["--", str(bodies), str(rate), tag, str(first_patient), f"Bearer {key}"]
    run = subprocess.run([*command, *arguments], capture_output=True, text=True, timeout=seconds + 60)
    line = next((x for x in run.stdout.splitlines() if x.startswith("WRK-JSON ")), None)
    if run.returncode != 0 or line is None:
        raise SystemExit(f"wrk failed ({run.returncode}): {run.stderr.strip() or run.stdout.strip()}")
    return dict(json.loads(line.removeprefix("WRK-JSON ")))


def measure(
    backend: str, target: str, pg_url: str, rate: float, seconds: float, warmup: float, saturate: float, workers: int, logs: Path
) -> LoadResult:
    label, path, table = TARGETS[target]
    with new_store(backend, pg_url) as database_url:
        if target == "bare":
            _prepare_bare(database_url)
        key = _bench_client(database_url) if target == "gateway" else "iapk_0000000000000000_not-checked-by-the-bare-endpoint-aaaaaaaaaaa"
        with server(target, database_url, workers, logs / f"{backend}-{target}.log") as (base, pgid):
            bodies = bodies_file(logs)
            connections = max(16, int(rate // 4))
            if warmup > 0:
                _warm_up(base + path, bodies, rate, warmup, connections, target, key)
            cpu, ticks, database = _group_cpu_seconds(pgid), machine_ticks(), _database_cpu_seconds(pg_url, database_url)
            run = wrk(base + path, bodies, rate, seconds, connections, f"R{target[0]}", 200_000, key)
            cpu, after, database_after = _group_cpu_seconds(pgid) - cpu, machine_ticks(), _database_cpu_seconds(pg_url, database_url)
            most = wrk(base + path, bodies, 0, saturate, 16, f"S{target[0]}", 600_000, key) if saturate > 0 else None
        stored = _count(database_url, table)
    statuses = dict(run["statuses"])
    created = statuses.pop("201", 0)
    failures = {f"HTTP {k}": v for k, v in statuses.items()} | {f"socket {k}": v for k, v in run["errors"].items() if v and k != "status"}
    notes = [] if run["requests"] else [f"no reply within the {seconds:g} s measured (the machine too busy for this run?)"]
    expected_min = created + (most or {}).get("statuses", {}).get("201", 0)
    if stored < expected_min:
        notes.append(f"stored {stored} < acknowledged {expected_min}")
    return LoadResult(
        backend=backend,
        target=label,
        offered=rate,
        seconds=run["duration_us"] / 1e6,
        sent=run["requests"],
        created=created,
        p50_ms=run["p50_us"] / 1000,
        p90_ms=run["p90_us"] / 1000,
        p99_ms=run["p99_us"] / 1000,
        max_ms=run["max_us"] / 1000,
        late=run["late_over_1ms"],
        late_max_ms=run["late_max_ms"],
        failures=failures,
        stored=stored,
        server_cpu_ms_per_msg=1000 * cpu / created if created else float("nan"),
        machine_busy=busy_between(ticks, after),
        machine_steal=steal_between(ticks, after),
        database_cpu_ms_per_msg=_per_message(database, database_after, created),
        max_rate=(most["statuses"].get("201", 0) / (most["duration_us"] / 1e6)) if most else 0.0,
        notes=notes,
    )


def _warm_up(url: str, bodies: Path, rate: float, seconds: float, connections: int, target: str, key: str) -> None:
    """The warm-up at the offered rate, run again (up to a minute) until the server has replied: on a busy machine a
    worker's first requests (imports, pools, caches) can take longer than a short warm-up, and then the measured run
    would time its cold start, or in a smoke run of 2 s catch no reply at all (no figure: '–')."""
    deadline = time.monotonic() + 60
    for attempt in range(1000):
        warm = wrk(url, bodies, rate, seconds, connections, f"W{target[0]}{attempt}", 0, key)
        if warm["requests"] or time.monotonic() > deadline:
            return


def _per_message(before: dict[int, float] | None, after: dict[int, float] | None, messages: int) -> float | None:
    """Milliseconds of the database's CPU per message between two readings (a backend first seen in the second reading
    counts from zero; one that closed between them is missed: the pools keep theirs open)."""
    if before is None or after is None or not messages:
        return None
    return 1000 * sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items()) / messages
