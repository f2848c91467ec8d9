"""What-if over stored referrals (issue 37): `iap-gateway rules what-if` timed on SQLite and PostgreSQL.

    .venv/bin/python -m bench.whatif                        # 10,000 referrals, both backends
    .venv/bin/python -m bench.whatif --n 200 --backends sqlite   # smoke run

For each backend, on a new store:
1. store N BNSSG referrals as the gateway stores them: each NHS 111 case (Dx12, 6-hour, red flag, 111 online Dx92,
   in turn) decided by the gateway's intake (`gateway.cas.intake.decide`), mapped (`map_cas_referral`) and written with the
   store's write function (`put_resources`, its Task versions kept), 500 a transaction, with its inbound message (raw
   body, reply) as intake keeps it. Call times spread over the last 30 days; one case in ten is open, called in the
   last five hours;
2. run `iap-gateway rules what-if` (a new process, as a person runs it) with a candidate that shortens the Dx12 window
   and moves the amber threshold, over the 30 days, JSON out; check it replayed every referral;
3. report the wall time of the command, start-up included.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.ingest import DEFAULT_PG, new_store
from bench.queue import nhs_number

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = ("option1-dx12.case.json", "option2-standard.case.json", "option2-red-flag.case.json", "online-dx92-summer.case.json")
BATCH = 500
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@dataclass
class WhatIfResult:
    backend: str
    referrals: int
    replayed: int
    changed: int
    seconds: float


def load(database_url: str, n: int, now: datetime) -> None:
    """Store `n` referrals and their inbound messages (see the module's docstring)."""
    from sqlalchemy import insert

    from adapters.nhs111_case import parse_nhs111_case
    from fhir_mapping.cas_referral import map_cas_referral
    from gateway.cas.cases import provenance
    from gateway.cas.intake import CHANNEL_NHS111, decide, plan_for
    from gateway.cas.rules.schema import load_rules
    from gateway.platform.store.db import make_engine, make_sessionmaker, migrate, write_transaction
    from gateway.platform.store.models import InboundMessage
    from gateway.platform.store.repo import put_resources

    registry = load_rules()
    templates = [json.loads((REPO / "fixtures" / "nhs111" / name).read_bytes()) for name in TEMPLATES]
    engine = make_engine(database_url)
    migrate(engine)
    sessions = make_sessionmaker(engine)
    try:
        for start in range(0, n, BATCH):
            writes: list[tuple[dict[str, Any], str | None]] = []
            messages: list[dict[str, Any]] = []
            for i in range(start, min(start + BATCH, n)):
                is_open = i % 10 == 0
                called = now - (timedelta(minutes=(i * 7) % 300) if is_open else timedelta(days=i % 29, minutes=1 + i % 1440))
                case = templates[i % len(templates)] | {"case_id": f"NHS111-WHATIF-{i:07d}", "call_time": called.isoformat()}
                case["patient"] = case["patient"] | {"nhs_number": nhs_number(i)}
                raw = json.dumps(case).encode()
                referral = parse_nhs111_case(raw)
                decision = decide(referral, registry)
                resources = map_cas_referral(referral, plan_for(decision), called).as_json()
                task = next(r for r in resources if r["resourceType"] == "Task")
                trace = provenance(task, "intake", "iap-gateway intake rules", decision.rule_ids, "; ".join(decision.reasons), called)
                writes += [(r, None if r["resourceType"] == "Patient" else "bnssg") for r in [*reversed(resources), trace]]
                messages.append(
                    {
                        "channel": CHANNEL_NHS111,
                        "message_id": referral.message_id,
                        "received_at": called,
                        "raw": raw,
                        "task_id": task["id"],
                        "rule_set": decision.rules.label,
                        "unused": "[]",
                        "response_status": 201,
                        "response_body": "{}",
                    }
                )
            with write_transaction(sessions) as session:
                put_resources(session, writes, now)
                session.execute(insert(InboundMessage), messages)
        if engine.dialect.name == "postgresql":
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                connection.exec_driver_sql("VACUUM ANALYZE")
    finally:
        engine.dispose()


def candidate(folder: Path) -> Path:
    """The live BNSSG file with a shorter Dx12 window (PT2H -> PT1H) and a wider amber band (PT1H -> PT3H)."""
    text = (REPO / "gateway" / "cas" / "rules" / "services" / "bnssg.yaml").read_text(encoding="utf-8")
    text = text.replace("Dx12:  {within: PT2H,", "Dx12:  {within: PT1H,").replace("amber_within: PT1H ", "amber_within: PT3H ")
    path = folder / "bnssg-candidate.yaml"
    path.write_text(text.replace('version: "', 'version: "bench-', 1), encoding="utf-8")
    return path


def measure(backend: str, pg_url: str, n: int) -> WhatIfResult:
    with new_store(backend, pg_url) as database_url, tempfile.TemporaryDirectory(prefix="iap-bench-whatif-") as folder:
        began = time.monotonic()
        load(database_url, n, NOW)
        print(f"  what-if: {backend}, {n} referrals stored in {time.monotonic() - began:.0f} s", file=sys.stderr, flush=True)
        command = [sys.executable, "-m", "gateway.cli", "rules", "what-if", str(candidate(Path(folder)))]
        command += ["--since", "30d", "--format", "json", "--now", NOW.isoformat()]
        env = {**os.environ, "DATABASE_URL": database_url.replace("postgresql://", "postgresql+psycopg://", 1)}
        began = time.monotonic()
        run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
        seconds = time.monotonic() - began
        if run.returncode != 0:
            raise SystemExit(f"what-if failed ({run.returncode}): {run.stderr[-2000:]}")
        report = json.loads(run.stdout)
        if report["replayed"] != n:
            raise SystemExit(f"what-if replayed {report['replayed']} of the {n} referrals stored")
        return WhatIfResult(backend, n, report["replayed"], len(report["cases"]), seconds)


def table(results: list[WhatIfResult]) -> str:
    lines = ["| backend | referrals stored | replayed | cases changed | what-if wall time (s) |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r.backend} | {r.referrals} | {r.replayed} | {r.changed} | {r.seconds:.1f} |" for r in results]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.whatif", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="referrals stored and replayed (default 10,000)")
    parser.add_argument("--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres (default both)")
    parser.add_argument("--pg-url", default=DEFAULT_PG, help=f"PostgreSQL server, no database (default {DEFAULT_PG})")
    args = parser.parse_args(argv)
    results = [measure(backend, args.pg_url, args.n) for backend in args.backends.split(",") if backend]
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
