"""The benchmark command runs end to end (a smoke run: tiny counts, no timing asserted; figures are in bench/README.md).

It must hold on a machine busy with other work (the whole suite on 2 cores): nothing here depends on how fast the
run goes or how much CPU a reading caught, only that each figure is there.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import PG_ADMIN_URL, ROOT


@pytest.mark.skipif(
    shutil.which("wrk") is None and os.environ.get("CI") != "true", reason="needs wrk (apt-get install wrk; .ci/run installs it)"
)
def test_bench_command_prints_mapping_ingest_and_ratio_tables() -> None:
    pg_server = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0]
    # a message that waits its turn is not turned away busy (503) when the machine is slow: the smoke run checks the
    # command works, not how much it takes (IAP_INGEST_QUEUE_SECONDS=0: no limit)
    env = os.environ | {"IAP_INGEST_QUEUE_SECONDS": "0"}
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--pg-url", pg_server],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,  # minutes on a busy machine; a quiet one takes about one
    )
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    sources = ["NHS 111 flat case JSON", "BaRS message Bundle", "MHPL call", "HL7 v2 ADT (RiO)", "HL7 v2 ORU/MDM/REF (RiO)"]
    sources += ["PCMIS contact (CSV row)", "SystmOne contact (CSV row)", "Outcome measure (QuestionnaireResponse)"]
    for source in sources:  # every source mapped on its own, none with an error (the exit status says so too)
        row = next((line for line in out.splitlines() if line.startswith(f"| {source} ")), None)
        assert row is not None and row.strip(" |").split("|")[-1].strip() == "0", (source, out)
    for backend in ("sqlite", "postgres"):
        assert sum(line.startswith(f"| {backend} ") for line in out.splitlines()) == 3  # gateway, bare, ratio
    assert "POST /ingest/nhs111" in out and "bare FastAPI, 1 insert" in out and "max req/s" in out
    header = next(line for line in out.splitlines() if line.startswith("| backend ") and "DB CPU ms/msg" in line)
    column = [cell.strip() for cell in header.strip(" |").split("|")].index("DB CPU ms/msg")
    for line in out.splitlines():
        cells = [cell.strip() for cell in line.strip(" |").split("|")]
        if cells[0] == "sqlite" and len(cells) > column:
            assert cells[column] == "–", line  # SQLite works in the server's own processes: counted in its CPU
        if cells[0] == "postgres" and len(cells) > column:
            # the server on this machine: its backends' CPU per message, read however busy the machine is (a backend
            # that ended mid-run is left out, not the reading); how much it is depends on the load, so only >= 0
            assert re.fullmatch(r"\d+\.\d\d", cells[column]) and float(cells[column]) >= 0, line
