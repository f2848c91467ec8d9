"""Offline mapping throughput: NHS 111 inputs -> FHIR Bundle with `gateway.intake.map_offline`.

No database, no HTTP: this times the adapter (parse + validate), the intake rules and the
FHIR mapping for one process on one core. For each source kind

* flat NHS 111 case JSON  (fixtures/nhs111/*.case.json)
* BaRS FHIR message Bundle (fixtures/nhs111/*.bundle.json)

it builds N inputs up front (the fixtures in turn, each copy with its own case_id /
Bundle.id so no two inputs are byte-identical), warms up, then maps the N inputs in a
loop and prints messages per second. A single process on a 2-core machine, so the
figure is per core.

    .venv/bin/python bench/bench_mapping.py            # N = 2000 per source
    .venv/bin/python bench/bench_mapping.py --n 500

Exits 1 if any input fails to map (or the time limit stops a loop early), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures" / "nhs111"
RECEIVED_AT = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def fixture_paths(pattern: str) -> list[Path]:
    return [p for p in sorted(FIXTURES.glob(pattern)) if not p.name.endswith(".expected.json")]


def case_variant(template: dict, i: int) -> bytes:
    """A flat case with its own case_id (pattern ^[A-Za-z0-9.\\-]+$, max 64)."""
    doc = dict(template)
    doc["case_id"] = f"BENCH-MAP-{i:08d}"
    return json.dumps(doc).encode()


def bars_variant(template: dict, i: int) -> bytes:
    """A BaRS Bundle with its own Bundle.id and MessageHeader fullUrl (references to the header are rewritten too)."""
    text = json.dumps(template)
    header_url = next(e["fullUrl"] for e in template["entry"] if e["resource"]["resourceType"] == "MessageHeader")
    text = text.replace(header_url, f"urn:uuid:{uuid.uuid4()}")
    doc = json.loads(text)
    doc["id"] = str(uuid.uuid4())
    return json.dumps(doc).encode()


def build_inputs(pattern: str, make: Callable[[dict, int], bytes], n: int) -> tuple[list[bytes], list[str]]:
    paths = fixture_paths(pattern)
    if not paths:
        raise SystemExit(f"no fixtures matching {FIXTURES / pattern}")
    templates = [json.loads(p.read_bytes()) for p in paths]
    return [make(templates[i % len(templates)], i) for i in range(n)], [p.name for p in paths]


def background_busy(seconds: float = 2.0) -> float | None:
    """Share of the machine's CPU busy over `seconds` before the run (other processes), from /proc/stat; None off Linux."""

    def ticks() -> tuple[int, int] | None:
        try:
            values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        except (OSError, ValueError, IndexError):
            return None
        total = sum(values[:8])
        return total - values[3] - values[4], total

    first = ticks()
    time.sleep(seconds)
    second = ticks()
    if not first or not second or second[1] <= first[1]:
        return None
    return (second[0] - first[0]) / (second[1] - first[1])


def run_source(label: str, warm: list[bytes], timed: list[bytes], registry, max_seconds: float) -> dict:
    """Map `warm` (untimed), then `timed` one by one; every failure is counted, none stops the loop."""
    from adapters.problems import GatewayInputError
    from gateway.intake import map_offline

    errors: list[str] = []

    def map_one(raw: bytes) -> None:
        try:
            bundle = map_offline(raw, registry, RECEIVED_AT)
            if bundle.get("resourceType") != "Bundle" or not bundle.get("entry"):
                errors.append("mapped to something that is not a non-empty Bundle")
        except GatewayInputError as exc:
            errors.append(f"refused: {exc}")
        except Exception as exc:  # noqa: BLE001 - a benchmark reports every failure and carries on
            errors.append(f"{type(exc).__name__}: {exc}")

    for raw in warm:
        map_one(raw)

    per_message: list[float] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    deadline = start + max_seconds
    for raw in timed:
        t = time.perf_counter()
        if t > deadline:
            break
        map_one(raw)
        per_message.append(time.perf_counter() - t)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    done = len(per_message)
    per_message.sort()
    return {
        "label": label,
        "n": done,
        "requested": len(timed),
        "elapsed": elapsed,
        "rate": done / elapsed if elapsed else float("nan"),
        "cpu_rate": done / cpu if cpu else float("nan"),
        "mean_ms": 1000 * statistics.fmean(per_message),
        "p50_ms": 1000 * per_message[done // 2],
        "p99_ms": 1000 * per_message[min(done - 1, int(done * 0.99))],
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="inputs mapped per source in the timed loop (default 2000)")
    parser.add_argument("--warmup", type=int, default=200, help="inputs mapped before timing (default 200)")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="stop a source's timed loop after this long (default 120)")
    args = parser.parse_args(argv)
    if args.n < 1 or args.warmup < 0 or args.max_seconds <= 0:
        parser.error("--n must be >= 1, --warmup >= 0, --max-seconds > 0")

    from gateway.rules.schema import load_rules

    registry = load_rules()
    before = background_busy()
    if before is not None:
        print(
            f"machine busy before start (other processes): {100 * before:.0f}% of {os.cpu_count()} cores"
            + ("  WARNING: figures share the CPU with that load" if before > 0.15 else "")
        )
    sources = [
        ("flat NHS 111 case JSON", "*.case.json", case_variant),
        ("BaRS message Bundle", "*.bundle.json", bars_variant),
    ]
    print(f"map_offline throughput, single process (python {platform.python_version()}), received_at={RECEIVED_AT.isoformat()}")
    results = []
    for label, pattern, make in sources:
        inputs, names = build_inputs(pattern, make, args.n + args.warmup)
        print(f"  {label}: fixtures {', '.join(names)}", flush=True)
        results.append(run_source(label, inputs[: args.warmup], inputs[args.warmup :], registry, args.max_seconds))

    print()
    print(f"{'source':<24} {'n':>6} {'seconds':>8} {'msg/s':>8} {'msg/cpu-s':>9} {'mean ms':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6}")
    failed = False
    for r in results:
        print(
            f"{r['label']:<24} {r['n']:>6} {r['elapsed']:>8.2f} {r['rate']:>8.0f} {r['cpu_rate']:>9.0f} {r['mean_ms']:>8.3f}"
            f" {r['p50_ms']:>7.3f} {r['p99_ms']:>7.3f} {r['errors']:>6}"
        )
        if r["errors"]:
            failed = True
            print(f"  first error: {r['first_error']}", file=sys.stderr)
        if r["n"] < r["requested"]:
            failed = True
            print(f"  {r['label']}: stopped by --max-seconds after {r['n']} of {r['requested']}", file=sys.stderr)
    print("(one process, one thread: msg/s is per core; msg/cpu-s divides by this process's CPU time instead of wall time)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
