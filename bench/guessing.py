"""Credential guessing: /healthz and a real client while 40 guessers send wrong secrets for a known API key id.

    .venv/bin/python -m bench.guessing                 # 15 s per configuration, 40 guessers, SQLite, loopback only
    .venv/bin/python -m bench.guessing --seconds 5 --guessers 10

Two configurations of `iap-gateway serve` (one worker), each on a new SQLite store:
- as shipped: IAP_AUTH_FAILURE_LIMIT=10 per IAP_AUTH_FAILURE_WINDOW_SECONDS=60 (then 429 with Retry-After, no check);
- no limit (IAP_AUTH_FAILURE_LIMIT=1000000): every guess costs its scrypt, at most two at once (the rest wait).
Each guesser loops GET /queue with `iapk_<the known key id>_<a random secret>`; a prober GETs /healthz every 50 ms;
the real client (its key used once before the guessing starts) GETs /fhir/Task?_count=1 every 200 ms. Printed: the
/healthz latency (p50, p99, max), the real client's replies, the guessers' replies by status, the server's peak RSS.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench import ingest

__all__ = ["main", "run"]


def _client_key(database_url: str) -> str:
    """A client allowed to read FHIR resources, in the store (migrated first): its API key."""
    from gateway.platform.security.clients import add_client
    from gateway.platform.store.db import make_engine, make_sessionmaker, migrate

    engine = make_engine(database_url)
    try:
        migrate(engine)
        with make_sessionmaker(engine).begin() as session:
            _, key = add_client(session, "bench-real", frozenset({"fhir:read"}), datetime.now(UTC))
        return key or ""
    finally:
        engine.dispose()


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(limit: int, seconds: float, guessers: int) -> dict[str, object]:
    os.environ["IAP_AUTH_FAILURE_LIMIT"] = str(limit)  # read by the server started below (its environment)
    with ingest.new_store("sqlite", "") as database_url, tempfile.TemporaryDirectory(prefix="iap-guess-") as folder:
        key = _client_key(database_url)
        key_id = key.split("_")[1]
        with ingest.server("gateway", database_url, 1, Path(folder) / "server.log") as (base, pid):
            real = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30)
            assert real.get("/fhir/Task", params={"_count": "1"}).status_code == 200  # a client already at work
            stop = threading.Event()
            statuses: Counter[int] = Counter()
            real_replies: Counter[int] = Counter()
            health_ms: list[float] = []
            lock = threading.Lock()

            def guess() -> None:
                with httpx.Client(base_url=base, timeout=60) as http:
                    while not stop.is_set():
                        guess_key = f"iapk_{key_id}_{secrets.token_urlsafe(32)}"
                        try:
                            status = http.get("/queue", headers={"Authorization": f"Bearer {guess_key}"}).status_code
                        except httpx.HTTPError:
                            status = 0
                        with lock:
                            statuses[status] += 1

            def probe() -> None:
                with httpx.Client(base_url=base, timeout=60) as http:
                    while not stop.is_set():
                        started = time.perf_counter()
                        http.get("/healthz")
                        health_ms.append(1000 * (time.perf_counter() - started))
                        time.sleep(0.05)

            def work() -> None:
                while not stop.is_set():
                    try:
                        status = real.get("/fhir/Task", params={"_count": "1"}).status_code
                    except httpx.HTTPError:
                        status = 0
                    real_replies[status] += 1
                    time.sleep(0.2)

            threads = [threading.Thread(target=guess) for _ in range(guessers)] + [threading.Thread(target=f) for f in (probe, work)]
            for thread in threads:
                thread.start()
            time.sleep(seconds)
            stop.set()
            for thread in threads:
                thread.join(timeout=120)
            real.close()
            rss = _peak_rss_mib(pid)
    ordered = sorted(health_ms)
    return {
        "limit": limit,
        "healthz_p50_ms": statistics.median(ordered),
        "healthz_p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "healthz_max_ms": ordered[-1],
        "probes": len(ordered),
        "real": dict(real_replies),
        "guesses": dict(statuses),
        "peak_rss_mib": rss,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.guessing", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15, help="guessing time per configuration (default 15)")
    parser.add_argument("--guessers", type=int, default=40, help="parallel guessers (default 40)")
    args = parser.parse_args(argv)
    print(f"{args.guessers} guessers, {args.seconds:g} s each, SQLite, one worker")
    print("| configuration | /healthz p50 / p99 / max ms | real client replies | guesses by status | peak RSS MiB |")
    print("|---|---|---|---|---|")
    failed = False
    for name, limit in (("limit 10 per 60 s (default)", 10), ("no limit", 1_000_000)):
        result = run(limit, args.seconds, args.guessers)
        print(
            f"| {name} | {result['healthz_p50_ms']:.1f} / {result['healthz_p99_ms']:.1f} / {result['healthz_max_ms']:.1f}"
            f" | {result['real']} | {result['guesses']} | {result['peak_rss_mib']:.0f} |",
            flush=True,
        )
        real = result["real"]
        failed |= not isinstance(real, dict) or set(real) != {200}
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
