"""The what-if benchmark runs end to end (a smoke run on SQLite: 100 referrals, no timing asserted; the figures at
10,000 referrals are in bench/README.md)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_whatif_bench_replays_every_stored_referral() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.whatif", "--n", "100", "--backends", "sqlite"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    rows = [[cell.strip() for cell in line.strip(" |").split("|")] for line in run.stdout.splitlines() if line.startswith("| sqlite ")]
    assert len(rows) == 1 and rows[0][1:3] == ["100", "100"], run.stdout  # stored, replayed: every one
    assert 0 < int(rows[0][3]) <= 100 and float(rows[0][4]) > 0, run.stdout  # the candidate changes cases; a time was taken
