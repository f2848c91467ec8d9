"""The benchmark: `.venv/bin/python -m bench` prints mapping throughput per source and HTTP ingest at a fixed load.

    .venv/bin/python -m bench                      # full run (~7 min): 200 req/s for 60 s per target and backend
    .venv/bin/python -m bench --quick              # smoke run (~1 min): tiny counts, 20 req/s for 2 s
    .venv/bin/python -m bench --only mapping       # or: --only ingest; --backends sqlite

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

from bench import ingest, mapping


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "?")
    memory = next((int(line.split()[1]) // 1024**2 for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")), 0)
    return f"{os.cpu_count()} cores ({cpu}), {memory} GiB RAM, Python {platform.python_version()}, {platform.system()} {platform.release()}"


def busy(seconds: float = 2.0) -> float:
    """Share of the machine's CPU busy over `seconds` (everything running: other processes included)."""

    def ticks() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
        return sum(values) - values[3] - values[4], sum(values)

    (b0, t0), _, (b1, t1) = ticks(), time.sleep(seconds), ticks()
    return (b1 - b0) / max(1, t1 - t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["mapping", "ingest"], help="run one part")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny counts and durations (checks the command works)")
    parser.add_argument("--n", type=int, default=5000, help="messages mapped per source (default 5000)")
    parser.add_argument("--rate", type=float, default=200, help="offered load, requests/s (default 200)")
    parser.add_argument("--seconds", type=float, default=60, help="measured run per target and backend (default 60)")
    parser.add_argument("--warmup", type=float, default=5, help="warm-up at the offered rate, seconds (default 5)")
    parser.add_argument("--saturate", type=float, default=10, help="closed-loop run for the most each target takes, seconds (default 10)")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes for both targets (default 2, one per core)")
    parser.add_argument("--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres (default both)")
    parser.add_argument("--pg-url", default=ingest.DEFAULT_PG, help=f"PostgreSQL server, no database (default {ingest.DEFAULT_PG})")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.rate, args.seconds, args.warmup, args.saturate = 50, 20, 2, 1, 1
    backends = [b for b in args.backends.split(",") if b]
    if any(b not in ("sqlite", "postgres") for b in backends):
        parser.error("--backends takes sqlite and/or postgres")

    print(f"machine: {machine()}; {date.today().isoformat()}")
    load = busy()
    print(f"busy before start (other processes): {100 * load:.0f}% of the machine" + ("  WARNING: figures share the CPU" if load > 0.1 else ""))
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
    return 1 if failed else 0


def print_mapping(results: list[mapping.MappingResult]) -> bool:
    print("\nMapping, one process (one core): adapter + rules + FHIR mapping + Bundle, no database, no HTTP")
    print(f"| {'source':<24} | {'n':>6} | {'msg/s/core':>10} | {'msg/CPU-s':>9} | {'p50 ms':>7} | {'p99 ms':>7} | {'errors':>6} |")
    print(f"|{'-' * 26}|{'-' * 7}:|{'-' * 11}:|{'-' * 10}:|{'-' * 8}:|{'-' * 8}:|{'-' * 7}:|")
    for r in results:
        print(
            f"| {r.source:<24} | {r.n:>6} | {r.rate:>10.0f} | {r.cpu_rate:>9.0f} | {r.p50_ms:>7.3f} | {r.p99_ms:>7.3f} | {len(r.errors):>6} |"
        )
    for r in results:
        if r.errors:
            print(f"  {r.source}: first error: {r.errors[0]}", file=sys.stderr)
    return any(r.errors for r in results)


def print_ingest(results: list[ingest.LoadResult], args: argparse.Namespace) -> bool:
    print(
        f"\nIngest: {args.rate:g} req/s offered for {args.seconds:g} s (wrk, open loop), then closed loop for {args.saturate:g} s;"
        f" {args.workers} worker process(es) per target; latency = send to reply"
    )
    print(
        f"| {'backend':<10} | {'target':<22} | {'sent':>6} | {'201':>6} | {'got/s':>6} | {'p50 ms':>7} | {'p90 ms':>7} | {'p99 ms':>7} |"
        f" {'max ms':>7} | {'late':>5} | {'CPU ms/msg':>10} | {'max req/s':>9} |"
    )
    print(f"|{'-' * 12}|{'-' * 24}|{'-' * 7}:|{'-' * 7}:|{'-' * 7}:|{'-' * 8}:|{'-' * 8}:|{'-' * 8}:|{'-' * 8}:|{'-' * 6}:|{'-' * 11}:|{'-' * 10}:|")
    for r in results:
        print(
            f"| {r.backend:<10} | {r.target:<22} | {r.sent:>6} | {r.created:>6} | {r.achieved:>6.1f} | {r.p50_ms:>7.1f} | {r.p90_ms:>7.1f} |"
            f" {r.p99_ms:>7.1f} | {r.max_ms:>7.1f} | {r.late:>5} | {r.server_cpu_ms_per_msg:>10.2f} | {r.max_rate:>9.0f} |"
        )
    print("\nGateway vs bare (ratio = gateway / bare; the target is >= 0.5)")
    print(f"| {'backend':<10} | {'got/s ratio':>11} | {'p50 ratio (bare/gw)':>19} | {'p99 ratio (bare/gw)':>19} | {'max req/s ratio':>15} |")
    print(f"|{'-' * 12}|{'-' * 12}:|{'-' * 20}:|{'-' * 20}:|{'-' * 16}:|")
    for backend in dict.fromkeys(r.backend for r in results):
        gw, bare = (next(r for r in results if r.backend == backend and r.target == ingest.TARGETS[t][0]) for t in ("gateway", "bare"))
        print(
            f"| {backend:<10} | {gw.achieved / bare.achieved if bare.achieved else float('nan'):>11.2f} |"
            f" {bare.p50_ms / gw.p50_ms if gw.p50_ms else float('nan'):>19.2f} | {bare.p99_ms / gw.p99_ms if gw.p99_ms else float('nan'):>19.2f} |"
            f" {gw.max_rate / bare.max_rate if bare.max_rate else float('nan'):>15.2f} |"
        )
    failed = False
    for r in results:
        for problem in [*(f"{k}: {v}" for k, v in r.failures.items()), *r.notes] + ([] if r.created == r.sent else [f"{r.sent - r.created} not 201"]):
            print(f"  {r.backend} {r.target}: {problem}", file=sys.stderr)
            failed = True
    return failed


if __name__ == "__main__":
    sys.exit(main())
