"""The queue benchmark runs end to end (a smoke run on SQLite: 200 referrals, no timing asserted; the figures at
100,000 referrals are in bench/README.md)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_queue_bench_measures_the_queue_and_task_search_empty_and_with_referrals_stored() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "queue", "--quick", "--backends", "sqlite"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    rows = [[cell.strip() for cell in line.strip(" |").split("|")] for line in run.stdout.splitlines() if line.startswith("| sqlite ")]
    measured = [row for row in rows if len(row) == 9]  # backend, request, referrals, open, n, p50, p99, max, failed
    for request in ("/queue?service=bnssg&_count=50", "/queue/summary?service=bnssg", "/fhir/Task?_sort=breach-time&_count=20"):
        assert sorted(row[2] for row in measured if row[1] == request) == ["0", "200"], run.stdout  # empty, then stored
    assert {row[3] for row in measured if row[2] == "200"} == {"20"}, run.stdout  # one case in ten open (--quick)
    assert all(row[8] == "0" for row in measured), run.stdout  # every request answered 200
    assert sum(len(row) == 5 for row in rows) == 3, run.stdout  # the empty-against-stored p99 table: one row per request
