"""`iap-gateway serve --demo` as a newcomer meets it (issue 35): a quiet start ending with the line to paste, a queue
that looks like a shift (CAS-09's colours side by side), and letters that arrive rather than die."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx

from tests.conftest import ROOT, bearer, free_port
from tests.test_cli import CLI, wait_healthy

_PROBLEM = re.compile(r"warning|error|traceback|exception", re.IGNORECASE)


def _console_when_ready(log: Path, seconds: float = 120) -> list[str]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        text = log.read_text()
        if "export IAP_TOKEN=" in text:
            return text.splitlines()
        time.sleep(0.2)
    raise AssertionError(f"no key line after {seconds} s:\n{log.read_text()[-2000:]}")


def _outbox(base: str, key: str) -> Counter[str]:
    entries = httpx.get(f"{base}/outbox", params={"_count": "200"}, headers=bearer(key), timeout=10).json()["entries"]
    return Counter(entry["status"] for entry in entries)


def test_serve_demo_starts_quietly_shows_a_shift_and_delivers_every_letter_CAS_09(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    data.mkdir()
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{data / 'demo.db'}", "IAP_MLLP_PORT": "0", "IAP_DELIVER_SECONDS": "1"}
    for name in ("IAP_LOG_LEVEL", "IAP_PRINT_DIR", "IAP_MESH_URL"):
        env.pop(name, None)
    log = tmp_path / "console.log"
    with log.open("wb") as sink:
        server = subprocess.Popen([*CLI, "serve", "--port", str(port), "--demo"], cwd=tmp_path, env=env, stdout=sink, stderr=sink)
        try:
            lines = _console_when_ready(log)
            wait_healthy(port)
            base = f"http://127.0.0.1:{port}"
            # the key line is the last thing printed; nothing before it is a warning, an error or a log line
            assert lines[-1].startswith("export IAP_TOKEN=iapk_"), lines[-5:]
            assert f"  API docs:  {base}/docs" in lines and f"IAP gateway demo on {base}" in lines
            assert len(lines) <= 15 and not any(_PROBLEM.search(line) or line.startswith("{") for line in lines), lines
            key = lines[-1].removeprefix("export IAP_TOKEN=")

            # CAS-09: the demo's cases are placed relative to now, so the queue shows a shift, not months-old breaches
            entries = httpx.get(f"{base}/queue", headers=bearer(key), timeout=10).json()["entries"]
            colours = Counter(entry["breach_status"] for entry in entries)
            assert len(colours) >= 3 and colours["black"] < len(entries), colours

            # the delivery worker (every second here) sends each demo letter to the demo's print folder: none dies
            deadline = time.monotonic() + 90
            statuses = _outbox(base, key)
            while time.monotonic() < deadline and (statuses["pending"] or statuses["sending"] or not statuses):
                time.sleep(0.5)
                statuses = _outbox(base, key)
            assert statuses and statuses["dead"] == 0 and statuses["failed"] == 0, statuses
            assert statuses["sent"] + statuses["delivered"] >= 1 and list((data / "demo-print").glob("*.pdf")), statuses
            after = log.read_text().splitlines()
            assert not any(_PROBLEM.search(line) for line in after), after[len(lines) :]
        finally:
            server.terminate()
            server.wait(timeout=30)


def test_report_demo_prints_the_report_and_no_log_lines(tmp_path: Path) -> None:
    result = subprocess.run(
        [*CLI, "report", "waitlist", "--demo"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env={**{k: v for k, v in os.environ.items() if k != "IAP_LOG_LEVEL"}, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("Wait list at ") and "first-appointment" in result.stdout
    assert result.stderr == "", result.stderr[:2000]  # no migrations of the throw-away database, no intake lines
