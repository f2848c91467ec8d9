"""Crash safety of delivery, against real PostgreSQL and NHS England's mesh-sandbox, with real processes and SIGKILL.

- The gateway killed between the commit (the case completed, the letter queued) and the send.
- The delivery worker killed between claiming and sending, and between sending and recording the send.
After a restart the letter is delivered and the practice's inbox holds it exactly once: a delivery whose
attempt died in doubt is checked against MESH by its local id (the letter id) before anything is re-sent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, bearer, empty_postgres, fixture_bytes, free_port, task_of
from tests.letter_helpers import NOTES, completed_case, outbox, params, write_routing
from tests.mesh_sandbox import GATEWAY_MAILBOX, PASSWORD, PRACTICE_MAILBOX, SHARED_KEY

AT = "2026-11-23T12:00:00Z"  # the test clock (tests/conftest.py NOW): when the letter is due
LEASE_GONE = "2026-11-23T12:10:00Z"  # after the 5-minute lease of a worker that died


@pytest.fixture
def database_url(pg_url: str) -> str:
    """These tests run on PostgreSQL only (several processes, row locks, SKIP LOCKED)."""
    empty_postgres(pg_url)
    return pg_url


@pytest.fixture
def gateway_env(database_url: str, mesh: Any, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "IAP_ENVIRONMENT": "test",
        "IAP_ROUTING_FILE": str(write_routing(tmp_path, mesh_mailboxes={"L81001": PRACTICE_MAILBOX})),
        "IAP_MESH_URL": mesh.url,
        "IAP_MESH_MAILBOX": GATEWAY_MAILBOX,
        "IAP_MESH_PASSWORD": PASSWORD,
        "IAP_MESH_SHARED_KEY": SHARED_KEY,
        "IAP_TICK_SECONDS": "0",
        "IAP_MLLP_PORT": "0",
        "IAP_LOG_LEVEL": "WARNING",
    }


def deliver(env: dict[str, str], now: str | None = None, failpoint: str | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "gateway.cli", "deliver", *(["--now", now] if now else [])]
    run_env = env | ({"IAP_FAILPOINTS": failpoint} if failpoint else {})
    return subprocess.run(command, cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def serve(gateway_env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    """`iap-gateway serve` as its own process (its delivery worker idle after its first pass), and a client for it."""
    added = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "clients", "add", "crash-test", "--scopes", "ingest:nhs111 cas:operate"],
        cwd=ROOT,
        env=gateway_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert added.returncode == 0, added.stderr
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    env = gateway_env | {"IAP_DELIVER_SECONDS": "3600"}
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=30, headers=bearer(added.stdout.strip())) as http:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if http.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield process, http
    if process.poll() is None:
        process.kill()
    process.wait(timeout=30)
    log.close()


def test_gateway_killed_between_commit_and_send_delivers_once_after_restart(serve, gateway_env, mesh) -> None:
    process, http = serve
    task = task_of(http.post("/ingest/nhs111", content=fixture_bytes("option2-standard.case.json")).json())
    done = http.post(f"/fhir/Task/{task['id']}/$end-assessment", content=params(practitioner="Dr R", registered=True, notes=NOTES))
    assert done.status_code == 200  # committed: the case, its letter and the delivery row
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert mesh.inbox(PRACTICE_MAILBOX) == []  # it died before sending
    first = deliver(gateway_env)  # the restarted gateway's worker (system clock: the letter is due)
    assert first.returncode == 0, first.stderr
    again = deliver(gateway_env)
    assert again.returncode == 0, again.stderr
    (message,) = mesh.inbox(PRACTICE_MAILBOX)
    assert message["workflow_id"] == "GPFED_CONSULT_REPORT"


def test_worker_killed_between_claim_and_send_sends_once_after_its_lease(client, gateway_env, mesh) -> None:
    completed_case(client)
    crashed = deliver(gateway_env, AT, failpoint="outbox.before-send")
    assert crashed.returncode == -signal.SIGKILL
    (row,) = outbox(client)
    assert row["status"] == "sending" and mesh.inbox(PRACTICE_MAILBOX) == []
    assert deliver(gateway_env, AT).returncode == 0  # still leased to the dead worker: nobody takes it yet
    assert outbox(client)[0]["status"] == "sending"
    assert deliver(gateway_env, LEASE_GONE).returncode == 0
    assert len(mesh.inbox(PRACTICE_MAILBOX)) == 1
    assert outbox(client)[0]["status"] == "sent"


def test_worker_killed_between_send_and_recording_is_not_sent_twice(client, gateway_env, mesh) -> None:
    completed_case(client)
    crashed = deliver(gateway_env, AT, failpoint="outbox.after-send")
    assert crashed.returncode == -signal.SIGKILL
    (message,) = mesh.inbox(PRACTICE_MAILBOX)  # it went, but the gateway never recorded that
    (row,) = outbox(client)
    assert row["status"] == "sending"
    restarted = deliver(gateway_env, LEASE_GONE)
    assert restarted.returncode == 0, restarted.stderr
    assert [m["id"] for m in mesh.inbox(PRACTICE_MAILBOX)] == [message["id"]]  # the practice sees it once
    recorded = client.get(f"/outbox/{row['id']}").json()
    assert recorded["status"] == "sent" and recorded["message_id"] == message["id"]
    assert any("found already sent after an interrupted attempt" in e["detail"] for e in recorded["events"])
    assert [e["outcome"] for e in recorded["events"] if e["kind"] == "attempt"] == ["started", "started", "sent"]
