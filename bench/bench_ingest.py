"""HTTP ingest latency at a fixed offered rate: `POST /ingest/nhs111` against a real gateway process.

For each backend (SQLite in a temp file, then PostgreSQL in a throwaway database) it

1. starts `iap-gateway serve` (uvicorn) in a subprocess on a free 127.0.0.1 port, with
   DATABASE_URL pointing at the fresh store, and waits for GET /healthz;
2. sends a few untimed warm-up cases one at a time;
3. offers flat NHS 111 cases (fixtures/nhs111/*.case.json in turn, each with its own
   case_id BENCH-00000000, BENCH-00000001, ...) at a fixed rate, open loop: request i is
   due at t0 + i/rate whatever happened to earlier ones, from an httpx.AsyncClient with
   at most --concurrency requests in flight;
4. stops the server (always, also on error or Ctrl-C), counts the stored inbound
   messages in the database, scans the server log for warnings/errors, and drops the
   throwaway store.

Latency is measured from the moment a request was *due* to the moment its reply was
read, so time spent waiting for a free concurrency slot counts (no coordinated
omission); "service" is from the moment it was actually sent.

    .venv/bin/python bench/bench_ingest.py                      # 50 req/s for 20 s, both backends
    .venv/bin/python bench/bench_ingest.py --rate 100 --seconds 10 --backends postgres

An error is any reply other than 201, a 201 marked X-Duplicate-Of (treated as a re-send),
or a transport error/timeout. "Unanswered" counts requests still outstanding --drain
seconds after the last one was due (the gateway did not keep up); they are cancelled.
Also printed: CPU seconds used by the gateway process, by this client, and the whole
machine's busy share during the load (client and server share the same cores).
Exits 1 if any backend had an error, an unanswered request, a failed start-up, or a
stored-row count that does not fit the 201s returned; 2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures" / "nhs111"
PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432"
UNANSWERED = "unanswered when the drain time ran out (cancelled)"


# -- inputs ------------------------------------------------------------------------------------
def case_templates() -> list[dict]:
    paths = [p for p in sorted(FIXTURES.glob("*.case.json")) if not p.name.endswith(".expected.json")]
    if not paths:
        raise SystemExit(f"no flat case fixtures in {FIXTURES}")
    return [json.loads(p.read_bytes()) for p in paths]


def make_bodies(templates: list[dict], prefix: str, count: int) -> list[bytes]:
    """`count` flat cases, the fixtures in turn, case_id f"{prefix}-{i:08d}" (^[A-Za-z0-9.\\-]+$, <= 64 chars)."""
    bodies = []
    for i in range(count):
        doc = dict(templates[i % len(templates)])
        doc["case_id"] = f"{prefix}-{i:08d}"
        bodies.append(json.dumps(doc).encode())
    return bodies


# -- server process ----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gateway_command() -> list[str]:
    script = Path(sys.executable).parent / "iap-gateway"
    if script.exists():
        return [str(script)]
    found = shutil.which("iap-gateway")
    return [found] if found else [sys.executable, "-m", "gateway.cli"]


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    log_path: Path
    log_file: IO[bytes]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_server(database_url: str, log_path: Path) -> Server:
    port = free_port()
    env = dict(os.environ, DATABASE_URL=database_url, IAP_ENVIRONMENT="test", IAP_MLLP_PORT="0", IAP_TICK_SECONDS="0")
    log_file = open(log_path, "wb")  # noqa: SIM115 - closed in stop_server
    proc = subprocess.Popen(
        [*gateway_command(), "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so stop_server reaches any child it starts
    )
    return Server(proc, port, log_path, log_file)


def wait_healthy(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no reply"
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with code {server.proc.returncode} before /healthz answered; log: {server.log_path}")
            try:
                reply = client.get(f"{server.base_url}/healthz")
                if reply.status_code == 200:
                    return
                last = f"HTTP {reply.status_code}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            time.sleep(0.2)
    raise RuntimeError(f"/healthz not ready after {timeout:.0f} s ({last}); log: {server.log_path}")


def stop_server(server: Server, grace: float = 10.0) -> None:
    """SIGTERM the server's own process group, SIGKILL it if it has not gone after `grace` seconds."""
    try:
        if server.proc.poll() is None:
            try:
                os.killpg(server.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                server.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(server.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                server.proc.wait(timeout=grace)
    finally:
        server.log_file.close()


def scan_log(path: Path) -> tuple[Counter, list[str]]:
    """Count the server's log events by level/event; keep a few non-info lines as samples."""
    counts: Counter = Counter()
    samples: list[str] = []
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            event = json.loads(line)
            key = f"{event.get('level', '?')}:{event.get('event', '?')}"
        except ValueError:
            # not structlog JSON: alembic/uvicorn/start-up text, or an uncaught exception's traceback
            alarming = any(w in line for w in ("Traceback", "Error", "ERROR", "Exception", "WARNING", "CRITICAL"))
            key = "plain text: error/traceback" if alarming else "plain text"
            event = None
        counts[key] += 1
        quiet = key == "plain text" or (event is not None and event.get("level") in ("info", "debug"))
        if not quiet and len(samples) < 8:
            samples.append(line[:300])
    return counts, samples


# -- CPU accounting (Linux /proc) --------------------------------------------------------------
def process_cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process (all its threads), from /proc/<pid>/stat; None if unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def machine_cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) jiffies over all cores, from /proc/stat; None if unavailable."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already inside user/nice
    return total - idle, total


def background_busy(seconds: float = 2.0) -> float | None:
    """Share of the machine's CPU busy over `seconds` while this benchmark does nothing (other tenants, test runs)."""
    first = machine_cpu_ticks()
    time.sleep(seconds)
    second = machine_cpu_ticks()
    if not first or not second or second[1] <= first[1]:
        return None
    return (second[0] - first[0]) / (second[1] - first[1])


# -- stores ------------------------------------------------------------------------------------
def create_pg_database(base: str) -> tuple[str, str]:
    import psycopg

    name = f"iap_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"{base}/postgres", autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, f"{base}/{name}"


def drop_pg_database(base: str, name: str) -> None:
    import psycopg

    with psycopg.connect(f"{base}/postgres", autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def count_inbound(database_url: str) -> int:
    from sqlalchemy import create_engine, text

    if database_url.startswith("postgresql://"):
        database_url = "postgresql+psycopg://" + database_url[len("postgresql://") :]
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM inbound_messages")).scalar_one())
    finally:
        engine.dispose()


# -- load --------------------------------------------------------------------------------------
@dataclass
class Outcome:
    due: float
    sent: float | None = None
    done: float | None = None
    status: int | None = None
    error: str | None = None


@dataclass
class LoadResult:
    outcomes: list[Outcome]
    t0: float
    t_end: float
    statuses: Counter = field(default_factory=Counter)


async def offer_load(base_url: str, bodies: list[bytes], rate: float, concurrency: int, timeout: float, drain: float) -> LoadResult:
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Content-Type": "application/json"}
    outcomes: list[Outcome] = []

    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout) as client:

        async def one(body: bytes, out: Outcome) -> None:
            async with slots:
                out.sent = loop.time()
                try:
                    reply = await client.post("/ingest/nhs111", content=body, headers=headers)
                    out.done = loop.time()
                    out.status = reply.status_code
                    if reply.status_code != 201:
                        out.error = f"HTTP {reply.status_code}: {reply.text[:200]}"
                    elif "x-duplicate-of" in reply.headers:
                        out.error = f"treated as a re-send (X-Duplicate-Of {reply.headers['x-duplicate-of']})"
                except httpx.HTTPError as exc:
                    out.done = loop.time()
                    out.error = f"{type(exc).__name__}: {exc}"

        tasks: list[asyncio.Task] = []
        t0 = loop.time() + 0.05
        try:
            for i, body in enumerate(bodies):
                due = t0 + i / rate
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                out = Outcome(due=due)
                outcomes.append(out)
                tasks.append(asyncio.create_task(one(body, out)))
            await asyncio.wait(tasks, timeout=drain)
        finally:
            # past the drain time, or interrupted: cancel what is left before the client closes
            pending = [task for task in tasks if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        t_end = loop.time()

    result = LoadResult(outcomes, t0, t_end)
    for out in outcomes:
        if out.done is None and out.error is None:
            out.error = UNANSWERED
        result.statuses[out.status if out.status is not None else "no reply"] += 1
    return result


def warm_up(base_url: str, bodies: list[bytes], timeout: float) -> list[str]:
    errors = []
    with httpx.Client(base_url=base_url, timeout=timeout) as client:
        for body in bodies:
            try:
                reply = client.post("/ingest/nhs111", content=body, headers={"Content-Type": "application/json"})
                if reply.status_code != 201:
                    errors.append(f"HTTP {reply.status_code}: {reply.text[:200]}")
            except httpx.HTTPError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
    return errors


# -- report ------------------------------------------------------------------------------------
def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil(n*q/100), at least 1
    return sorted_values[int(rank) - 1]


def summarise(name: str, result: LoadResult, rate: float) -> dict:
    outs = result.outcomes
    answered = [(o.due, o.sent, o.done) for o in outs if o.done is not None and o.sent is not None and o.error is None]
    latency = sorted(1000 * (done - due) for due, _, done in answered)
    service = sorted(1000 * (done - sent) for _, sent, done in answered)
    queued = sorted(1000 * (o.sent - o.due) for o in outs if o.sent is not None)
    errors = [o for o in outs if o.error is not None and o.error != UNANSWERED]
    unanswered = sum(1 for o in outs if o.error == UNANSWERED)
    last_done = max((o.done for o in outs if o.done is not None), default=result.t0)
    return {
        "backend": name,
        "offered": len(outs),
        "offered_rate": rate,
        "ok": len(answered),
        "errors": len(errors),
        "unanswered": unanswered,
        "error_kinds": Counter((o.error or "").split(":")[0] for o in errors),
        "error_samples": [o.error for o in errors[:3]],
        "elapsed": result.t_end - result.t0,
        "statuses": result.statuses,
        "achieved_rate": len(answered) / (last_done - result.t0) if last_done > result.t0 else 0.0,
        "p50": percentile(latency, 50),
        "p90": percentile(latency, 90),
        "p99": percentile(latency, 99),
        "max": latency[-1] if latency else float("nan"),
        "service_p50": percentile(service, 50),
        "service_p99": percentile(service, 99),
        "queued_max": queued[-1] if queued else float("nan"),
    }


# -- one backend -------------------------------------------------------------------------------
def run_backend(name: str, args: argparse.Namespace, templates: list[dict], workdir: Path) -> dict:
    """Start the store and the server, warm up, offer the load, stop, check; always clean up."""
    total = max(1, round(args.rate * args.seconds))
    warm_bodies = make_bodies(templates, "BENCH-WARM", args.warmup)
    bodies = make_bodies(templates, "BENCH", total)
    pg_name = None
    server = None
    summary: dict = {"backend": name, "fatal": None}
    try:
        if name == "sqlite":
            database_url = f"sqlite:///{workdir / 'bench-sqlite.db'}"
        else:
            pg_name, database_url = create_pg_database(args.pg_url.rstrip("/"))
        print(f"[{name}] store: {database_url}", flush=True)
        server = start_server(database_url, workdir / f"server-{name}.log")
        started = time.monotonic()
        wait_healthy(server, args.startup_timeout)
        print(f"[{name}] gateway pid {server.proc.pid} on {server.base_url}, healthy after {time.monotonic() - started:.1f} s", flush=True)

        warm_errors = warm_up(server.base_url, warm_bodies, args.timeout)
        if warm_errors:
            raise RuntimeError(f"warm-up failed ({len(warm_errors)} of {len(warm_bodies)}): {warm_errors[0]}")
        print(
            f"[{name}] warmed up ({len(warm_bodies)} cases); offering {total} cases at {args.rate:g} req/s "
            f"for {args.seconds:g} s, <= {args.concurrency} in flight",
            flush=True,
        )

        server_cpu0, client_cpu0, machine0 = process_cpu_seconds(server.proc.pid), time.process_time(), machine_cpu_ticks()
        result = asyncio.run(offer_load(server.base_url, bodies, args.rate, args.concurrency, args.timeout, args.drain))
        server_cpu1, client_cpu1, machine1 = process_cpu_seconds(server.proc.pid), time.process_time(), machine_cpu_ticks()
        summary.update(summarise(name, result, args.rate))
        wall = summary["elapsed"]
        if server_cpu0 is not None and server_cpu1 is not None:
            summary["server_cpu_s"] = server_cpu1 - server_cpu0
            summary["server_cpu_ms_per_req"] = 1000 * (server_cpu1 - server_cpu0) / max(1, summary["ok"])
        summary["client_cpu_s"] = client_cpu1 - client_cpu0
        if machine0 and machine1 and machine1[1] > machine0[1]:
            summary["machine_busy"] = (machine1[0] - machine0[0]) / (machine1[1] - machine0[1])
        summary["wall_s"] = wall
    except Exception as exc:  # noqa: BLE001 - report it, still clean up, go on to the next backend
        summary["fatal"] = f"{type(exc).__name__}: {exc}"
    finally:
        if server is not None:
            stop_server(server)
            summary["exit_code"] = server.proc.returncode
            summary["log_counts"], summary["log_samples"] = scan_log(server.log_path)
            if summary.get("fatal"):
                summary["log_tail"] = server.log_path.read_text(errors="replace").splitlines()[-12:]
        try:
            if server is not None and summary.get("fatal") is None:
                summary["stored"] = count_inbound(database_url)
        except Exception as exc:  # noqa: BLE001
            summary["stored"] = f"could not count: {type(exc).__name__}: {exc}"
        if pg_name is not None:
            try:
                drop_pg_database(args.pg_url.rstrip("/"), pg_name)
                print(f"[{name}] dropped database {pg_name}", flush=True)
            except Exception as exc:  # noqa: BLE001
                print(f"[{name}] WARNING: could not drop database {pg_name}: {exc}", file=sys.stderr)
    return summary


def print_summary(results: list[dict], args: argparse.Namespace) -> bool:
    """Print the table and the details; return True if everything passed."""
    ok = True
    print()
    print(
        f"POST /ingest/nhs111, offered {args.rate:g} req/s open loop for {args.seconds:g} s, <= {args.concurrency} in flight "
        f"(latency = due -> reply read, ms)"
    )
    print(
        f"{'backend':<9} {'offered':>7} {'ok':>6} {'errors':>6} {'unansw':>6} {'got/s':>6} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7} "
        f"{'svc p50':>7} {'svc p99':>7} {'stored':>6}"
    )
    for r in results:
        if r.get("fatal"):
            ok = False
            print(f"{r['backend']:<9} FAILED: {r['fatal']}")
            continue
        stored = r.get("stored")
        print(
            f"{r['backend']:<9} {r['offered']:>7} {r['ok']:>6} {r['errors']:>6} {r['unanswered']:>6} {r['achieved_rate']:>6.1f}"
            f" {r['p50']:>7.1f} {r['p90']:>7.1f} {r['p99']:>7.1f} {r['max']:>7.1f}"
            f" {r['service_p50']:>7.1f} {r['service_p99']:>7.1f} {stored!s:>6}"
        )
        if r["errors"] or r["unanswered"]:
            ok = False
        # every 201 must be stored; a request cancelled by the client may or may not have been committed
        low, high = r["ok"] + args.warmup, r["offered"] + args.warmup
        if not isinstance(stored, int) or not (low <= stored <= high):
            ok = False
            print(f"  {r['backend']}: stored inbound messages {stored}, expected {low}..{high} (201 replies + warm-up .. all sent)")
    for r in results:
        details = []
        if "server_cpu_ms_per_req" in r:
            details.append(
                f"CPU over {r['wall_s']:.1f} s: gateway process {r['server_cpu_s']:.1f} s ({r['server_cpu_ms_per_req']:.1f} ms per 201), "
                f"this client {r['client_cpu_s']:.1f} s, whole machine {100 * r.get('machine_busy', float('nan')):.0f}% busy "
                f"of {os.cpu_count()} cores"
            )
        if r.get("unanswered"):
            details.append(
                f"{r['unanswered']} request(s) still unanswered {args.drain:g} s after the last was due: "
                f"the gateway did not keep up with the offered rate"
            )
        if r.get("errors"):
            details.append(f"errors by kind: {dict(r['error_kinds'])}; statuses: {dict(r['statuses'])}")
            details += [f"e.g. {e}" for e in r["error_samples"]]
        if r.get("queued_max", 0) > 50.0:
            details.append(f"largest send lag (due -> sent) {r['queued_max']:.1f} ms: client event loop busy or concurrency cap reached")
        counts = r.get("log_counts") or {}
        noisy = {k: v for k, v in counts.items() if not k.startswith("info:") and k != "plain text"}
        if noisy:
            details.append(f"server log, non-info events: {noisy}")
            details += [f"  {s}" for s in r.get("log_samples", [])[:4]]
        if r.get("log_tail"):
            details.append("last lines of the gateway's log:")
            details += [f"  | {line[:200]}" for line in r["log_tail"]]
        if r.get("exit_code") not in (0, None, -signal.SIGTERM):
            details.append(f"gateway exit code: {r['exit_code']} (0 or -SIGTERM expected)")
        if details:
            print(f"[{r['backend']}]")
            for d in details:
                print(f"  {d}")
    print("PASS" if ok else "FAIL")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=15.0, help="offered requests per second (default 15: below saturation)")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to offer the load (default 20)")
    parser.add_argument("--concurrency", type=int, default=32, help="most requests in flight at once (default 32)")
    parser.add_argument("--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres (default both)")
    parser.add_argument("--pg-url", default=PG_DEFAULT, help=f"PostgreSQL server, without a database name (default {PG_DEFAULT})")
    parser.add_argument("--warmup", type=int, default=20, help="untimed cases sent one at a time first (default 20)")
    parser.add_argument("--timeout", type=float, default=15.0, help="per-request timeout once sent, seconds (default 15)")
    parser.add_argument(
        "--drain",
        type=float,
        default=25.0,
        help="seconds to wait for outstanding replies after the last request was due; the rest are cancelled (default 25)",
    )
    parser.add_argument("--startup-timeout", type=float, default=60.0, help="seconds to wait for /healthz (default 60)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the server logs (their path is printed)")
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not backends or any(b not in ("sqlite", "postgres") for b in backends):
        parser.error("--backends takes sqlite and/or postgres")
    if (
        not (0 < args.rate <= 2000)
        or not (0 < args.seconds <= 600)
        or not (1 <= args.concurrency <= 1000)
        or args.warmup < 0
        or not (0 < args.drain <= 300)
    ):
        parser.error("need 0 < --rate <= 2000, 0 < --seconds <= 600, 1 <= --concurrency <= 1000, --warmup >= 0, 0 < --drain <= 300")
    if args.rate * args.seconds > 100_000:
        parser.error("--rate x --seconds is over 100000 requests")

    print(f"ingest benchmark: python {platform.python_version()}, httpx {httpx.__version__}, server {' '.join(gateway_command())}")

    def _terminate(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop the server and drop the store

    signal.signal(signal.SIGTERM, _terminate)
    before = background_busy()
    if before is not None:
        print(
            f"machine busy before start (other processes): {100 * before:.0f}% of {os.cpu_count()} cores"
            + ("  WARNING: the figures below share the CPU with that load" if before > 0.15 else "")
        )
    templates = case_templates()
    workdir = Path(tempfile.mkdtemp(prefix="iap-bench-"))
    results = []
    try:
        for name in backends:
            results.append(run_backend(name, args, templates, workdir))
    except KeyboardInterrupt:
        print("interrupted: gateway stopped, throwaway store removed", file=sys.stderr)
        return 130
    finally:
        if args.keep_logs:
            print(f"server logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0 if print_summary(results, args) else 1


if __name__ == "__main__":
    sys.exit(main())
