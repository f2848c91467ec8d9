"""The benchmark: `.venv/bin/python -m bench` prints mapping throughput per source and HTTP ingest at a fixed load.

    .venv/bin/python -m bench                      # full run (~7 min): 200 req/s for 60 s per target and backend
    .venv/bin/python -m bench --quick              # smoke run (~1 min): tiny counts, 20 req/s for 2 s
    .venv/bin/python -m bench --only mapping       # or: --only ingest; --backends sqlite
    .venv/bin/python -m bench --only queue         # the CAS queue and Task searches, empty and at 100,000 referrals (~8 min)

The ingest part needs wrk (`apt-get install wrk`) and, for PostgreSQL, a server at --pg-url.
Exit status 1 if any message failed to map, any request failed, or a stored count is short.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from bench import ingest, mapping, queue


def machine() -> str:
    cpuinfo, meminfo = Path("/proc/cpuinfo").read_text().splitlines(), Path("/proc/meminfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    memory = next((int(line.split()[1]) // 1024**2 for line in meminfo if line.startswith("MemTotal")), 0)
    return f"{os.cpu_count()} cores ({cpu}), {memory} GiB RAM, Python {platform.python_version()}, {platform.system()} {platform.release()}"


def busy(seconds: float = 2.0) -> tuple[float, float]:
    """Shares of the machine's CPU busy (everything running: other processes included) and stolen by the host over `seconds`."""
    before = ingest.machine_ticks()
    time.sleep(seconds)
    after = ingest.machine_ticks()
    return ingest.busy_between(before, after), ingest.steal_between(before, after)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["mapping", "ingest", "queue"], help="run one part (queue runs only when asked)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny counts and durations (checks the command works)")
    parser.add_argument("--n", type=int, default=5000, help="messages mapped per source (default 5000)")
    parser.add_argument("--rate", type=float, default=200, help="offered load, requests/s (default 200)")
    parser.add_argument("--seconds", type=float, default=60, help="measured run per target and backend (default 60)")
    parser.add_argument("--warmup", type=float, default=5, help="warm-up at the offered rate, seconds (default 5)")
    parser.add_argument("--saturate", type=float, default=10, help="closed-loop run for the most each target takes, seconds (default 10)")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes for both targets (default 2, one per core)")
    parser.add_argument("--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres (default both)")
    parser.add_argument("--pg-url", default=ingest.DEFAULT_PG, help=f"PostgreSQL server, no database (default {ingest.DEFAULT_PG})")
    parser.add_argument("--tasks", type=int, default=100_000, help="queue: referrals stored before the second measurement")
    parser.add_argument("--open-every", type=int, default=100, help="queue: one stored case in this many is open (default 100)")
    parser.add_argument("--requests", type=int, default=300, help="queue: timed requests of each kind per measurement")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.rate, args.seconds, args.warmup, args.saturate = 50, 20, 2, 1, 1
        args.tasks, args.open_every, args.requests = 200, 10, 20
    backends = [b for b in args.backends.split(",") if b]
    if any(b not in ("sqlite", "postgres") for b in backends):
        parser.error("--backends takes sqlite and/or postgres")

    print(f"machine: {machine()}; {date.today().isoformat()}")
    load, steal = busy()
    warning = "  WARNING: the figures share the CPU with that load" if load > 0.1 else ""
    print(f"busy before start (other processes): {100 * load:.0f}% of the machine, {100 * steal:.0f}% taken by the host{warning}")
    failed = False
    if args.only in (None, "mapping"):
        failed |= print_mapping(mapping.run(args.n, max(10, args.n // 10)))
    if args.only in (None, "ingest"):
        ingest.require_wrk()
        with tempfile.TemporaryDirectory(prefix="iap-bench-logs-") as folder:
            results = []
            for backend in backends:
                for target in ("gateway", "bare"):
                    print(f"  ingest: {backend}, {ingest.TARGETS[target][0]} ...", file=sys.stderr, flush=True)
                    results.append(
                        ingest.measure(
                            backend, target, args.pg_url, args.rate, args.seconds, args.warmup, args.saturate, args.workers, Path(folder)
                        )
                    )
            failed |= print_ingest(results, args)
    if args.only == "queue":
        if not 0 < args.tasks <= 1_000_000:
            parser.error("--tasks takes 1 to 1,000,000")
        found = queue.run_all(backends, args.pg_url, args.tasks, args.open_every, args.requests, max(5, args.requests // 10))
        failed |= print_queue(found)
    return 1 if failed else 0


def table(headers: list[str], rows: list[list[str]], text_columns: int = 1) -> None:
    """A Markdown table (the first `text_columns` left-aligned, the figures right-aligned), as pasted into the READMEs."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        padded = (c.ljust(w) if i < text_columns else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        return "| " + " | ".join(padded) + " |"

    print(line(headers))
    print("|" + "|".join("-" * (w + 2) if i < text_columns else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|")
    for row in rows:
        print(line(row))


def print_mapping(results: list[mapping.MappingResult]) -> bool:
    print("\nMapping, one process (one core): adapter + rules + FHIR mapping + Bundle, no database, no HTTP")
    table(
        ["source", "n", "msg/s/core", "msg/CPU-s", "p50 ms", "p99 ms", "errors"],
        [
            [r.source, str(r.n), f"{r.rate:.0f}", f"{r.cpu_rate:.0f}", f"{r.p50_ms:.3f}", f"{r.p99_ms:.3f}", str(len(r.errors))]
            for r in results
        ],
    )
    for r in results:
        if r.errors:
            print(f"  {r.source}: first error: {r.errors[0]}", file=sys.stderr)
    return any(r.errors for r in results)


def _ratio(top: float, bottom: float) -> str:
    return f"{top / bottom:.2f}" if bottom else "n/a"


def _optional(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def print_ingest(results: list[ingest.LoadResult], args: argparse.Namespace) -> bool:
    print(
        f"\nIngest: {args.rate:g} req/s offered for {args.seconds:g} s (wrk, open loop), then closed loop for {args.saturate:g} s;"
        f" {args.workers} worker process(es) per target; latency = send to reply"
    )
    table(
        ["backend", "target", "sent", "201", "got/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "late", "CPU ms/msg"]
        + ["DB CPU ms/msg", "busy", "steal", "max req/s"],
        [
            [r.backend, r.target, str(r.sent), str(r.created), f"{r.achieved:.1f}", f"{r.p50_ms:.1f}", f"{r.p90_ms:.1f}"]
            + [f"{r.p99_ms:.1f}", f"{r.max_ms:.1f}", str(r.late), f"{r.server_cpu_ms_per_msg:.2f}", _optional(r.database_cpu_ms_per_msg)]
            + [f"{100 * r.machine_busy:.0f}%", f"{100 * r.machine_steal:.0f}%", f"{r.max_rate:.0f}"]
            for r in results
        ],
        text_columns=2,
    )
    print("\nGateway against the bare endpoint, same run (throughput: gateway/bare; latency: bare/gateway; target >= 0.5)")
    rows = []
    for backend in dict.fromkeys(r.backend for r in results):
        gw, bare = (next(r for r in results if r.backend == backend and r.target == ingest.TARGETS[t][0]) for t in ("gateway", "bare"))
        rows.append(
            [backend, _ratio(gw.achieved, bare.achieved), _ratio(bare.p50_ms, gw.p50_ms), _ratio(bare.p99_ms, gw.p99_ms)]
            + [_ratio(gw.max_rate, bare.max_rate)]
        )
    table(["backend", "got/s at the offered load", "p50", "p99", "max req/s"], rows)
    failed = False
    for r in results:
        problems = [*(f"{k}: {v}" for k, v in r.failures.items()), *r.notes]
        if r.created != r.sent:
            problems.append(f"{r.sent - r.created} requests without a 201")
        for problem in problems:
            print(f"  {r.backend} {r.target}: {problem}", file=sys.stderr)
        failed |= bool(problems)
    return failed


def print_queue(results: list[queue.QueueResult]) -> bool:
    print("\nCAS queue and Task search: one connection, one request after another; latency = send to whole reply")
    table(
        ["backend", "request", "referrals", "open", "n", "p50 ms", "p99 ms", "max ms", "failed"],
        [
            [r.backend, queue.REQUESTS[r.request], str(r.tasks), str(r.open_cases), str(r.n)]
            + [f"{r.p50_ms:.1f}", f"{r.p99_ms:.1f}", f"{r.max_ms:.1f}", str(sum(r.failures.values()))]
            for r in results
        ],
        text_columns=2,
    )
    print("\np99 ms on the empty store and with the referrals stored (target < 50 ms)")
    rows = []
    for r in results:
        if r.tasks:
            empty = next(e for e in results if (e.backend, e.request, e.tasks) == (r.backend, r.request, 0))
            rows.append([r.backend, queue.REQUESTS[r.request], f"{empty.p99_ms:.1f}", f"{r.p99_ms:.1f}", str(r.tasks)])
    table(["backend", "request", "empty", "stored", "referrals"], rows, text_columns=2)
    for r in results:
        for failure, count in r.failures.items():
            print(f"  {r.backend} {r.request} ({r.tasks} stored): {failure} x{count}", file=sys.stderr)
    return any(r.failures for r in results)


if __name__ == "__main__":
    sys.exit(main())
