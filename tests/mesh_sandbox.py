"""NHS England's mesh-sandbox as a real local MESH peer for the tests, in its own venv and process.

The venv (.venv-mesh, beside the repo's .venv) is built from tests/mesh/requirements-mesh-sandbox.txt
the first time, and rebuilt when that file changes. One sandbox runs per test session on a free
loopback port (file store, full HMAC auth); tests reset it between uses. Stopped by its PID.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from mesh_client import MeshClient

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "tests" / "mesh" / "requirements-mesh-sandbox.txt"
VENV = ROOT / ".venv-mesh"
SHARED_KEY = "TestKey"
PASSWORD = "password"  # the sandbox's password for every mailbox
GATEWAY_MAILBOX = "X26ABC1"  # built-in sandbox mailboxes
PRACTICE_MAILBOX = "X26ABC2"


def build_venv() -> Path:
    """The sandbox's own venv, built once per requirements file (a stamp records which)."""
    stamp = VENV / ".requirements.sha256"
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if stamp.is_file() and stamp.read_text().strip() == digest and (VENV / "bin" / "uvicorn").exists():
        return VENV
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True, timeout=300)
    pip = subprocess.run(
        [str(VENV / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", "-r", str(REQUIREMENTS)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if pip.returncode != 0:
        raise RuntimeError(f"building {VENV} failed: {pip.stderr[-2000:]}")
    stamp.write_text(digest)
    return VENV


@dataclass
class MeshSandbox:
    url: str
    store: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def reset(self) -> None:
        """Empty every mailbox (file store: the files go, then the sandbox reloads from the folders)."""
        import shutil

        for inbox in self.store.glob("*/in"):
            for item in inbox.iterdir():
                shutil.rmtree(item) if item.is_dir() else item.unlink()
        with httpx.Client(timeout=10) as http:
            http.delete(f"{self.url}/admin/reset").raise_for_status()

    @contextmanager
    def client(self, mailbox: str) -> Iterator[MeshClient]:
        with MeshClient(self.url, mailbox=mailbox, password=PASSWORD, shared_key=SHARED_KEY.encode(), max_retries=0) as client:
            yield client

    def inbox(self, mailbox: str) -> list[dict[str, Any]]:
        """Every message waiting in `mailbox`: headers and body (read, not acknowledged)."""
        out = []
        with self.client(mailbox) as client:
            for message_id in client.list_messages():
                message = client.retrieve_message(message_id)
                try:
                    body = message.read()
                finally:
                    message.close()
                out.append(
                    {
                        "id": message_id,
                        "body": body,
                        "workflow_id": message.workflow_id,
                        "local_id": message.local_id,
                        "subject": message.subject,
                        "content_type": message.content_type,
                        "sender": message.sender,
                        "message_type": message.message_type,
                        "filename": message.filename,
                    }
                )
        return out

    def report(self, mailbox: str, linked_message_id: str, local_id: str, workflow_id: str) -> None:
        """Make MESH send `mailbox` a non-delivery report about a message (the sandbox's admin endpoint)."""
        body = {
            "mailbox_id": mailbox,
            "code": "14",
            "description": "Undelivered message",
            "workflow_id": workflow_id,
            "local_id": local_id,
            "linked_message_id": linked_message_id,
        }
        with httpx.Client(timeout=10) as http:
            http.post(f"{self.url}/messageexchange/admin/report", json=body).raise_for_status()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_sandbox(store: Path, extra_mailboxes: tuple[str, ...] = ()) -> MeshSandbox:
    """Start mesh-sandbox on a free loopback port; `extra_mailboxes` are registered (their folders made first)."""
    venv = build_venv()
    for mailbox in extra_mailboxes:
        (store / mailbox.upper() / "in").mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = store.parent / "mesh-sandbox.log"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "STORE_MODE": "file",
        "MAILBOXES_DATA_DIR": str(store),
        "AUTH_MODE": "full",
        "SHARED_KEY": SHARED_KEY,
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(venv / "bin" / "uvicorn"), "mesh_sandbox.api:app", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=store,
        )
    sandbox = MeshSandbox(f"http://127.0.0.1:{port}", store, process, log_path)
    deadline = time.monotonic() + 60
    with httpx.Client(timeout=2) as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"mesh-sandbox exited: {log_path.read_text()[-2000:]}")
            try:
                if http.get(f"{sandbox.url}/health").status_code == 200:
                    return sandbox
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    sandbox.stop()
    raise RuntimeError(f"mesh-sandbox did not become healthy: {log_path.read_text()[-2000:]}")
