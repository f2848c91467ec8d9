"""No patient identifiers or clinical text in the logs (structlog JSON lines), for accepted and refused input alike.

Two tests: one runs every fixture through every channel and greps its own log; the other runs last and
greps the log of the whole test run (every test, and every gateway process the tests started, logs to
one file: tests/conftest.py RUN_LOG) for every fixture's NHS number, name, postcode and clinical text.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.hl7v2 import frame
from gateway.platform.security.clients import add_client
from gateway.platform.store.db import make_engine, make_sessionmaker, migrate
from tests.conftest import BARS_EXAMPLES, FIXTURES, ROOT, RUN_LOG, bars_headers, bearer, free_port, refusing_nhs_numbers
from tests.test_cli import wait_healthy
from tests.test_hl7v2 import read_acks

ROOT_FIXTURES = FIXTURES.parent


def _identifiers() -> set[str]:
    """Every patient identifier and every piece of clinical free text in the fixtures."""
    found: set[str] = set()
    for path in FIXTURES.glob("*.json"):
        data = json.loads(path.read_text())
        if data.get("resourceType") == "Bundle":
            for entry in data["entry"]:
                resource = entry["resource"]
                if resource["resourceType"] == "Patient":
                    found |= {i["value"] for i in resource["identifier"]}
                    found |= {n["family"] for n in resource["name"]} | {g for n in resource["name"] for g in n["given"]}
        else:
            patient = data["patient"]
            found |= {patient["nhs_number"], patient["family"], *patient["given"], patient["postcode"]}
            if data.get("free_text"):
                found.add(data["free_text"])
    for path in (ROOT_FIXTURES / "mhpl").glob("*.json"):
        patient = json.loads(path.read_text())["patient"]
        found |= {patient["nhs_number"], patient["family"], *patient["given"], patient["postcode"]}
    for path in (ROOT_FIXTURES / "rio").glob("*.hl7"):
        segments = path.read_bytes().decode().split("\r")
        fields = next(seg for seg in segments if seg.startswith("PID|")).split("|")
        found |= {fields[3].split("^")[0], *[part for part in fields[5].split("^")[:2] if part]}
        found |= {text for seg in segments if seg.startswith("OBX|") for text in seg.split("|")[5].split("~") if text}
    for path in (ROOT_FIXTURES / "cleo").glob("*.json"):
        found.add(json.loads(path.read_text())["notes"])
    for path in (*(ROOT_FIXTURES / "pcmis").glob("*.csv"), *(ROOT_FIXTURES / "systmone").glob("*.csv")):
        for row in csv.DictReader(io.StringIO(path.read_text())):
            found.add(row["nhs_number"])
            found |= {value for name, value in row.items() if name.endswith("_text") and value}
    for path in (ROOT_FIXTURES / "measures").glob("*.json"):
        found.add(json.loads(path.read_text())["subject"]["identifier"]["value"])
    found.add("3478526985")  # the public examples' number
    return {value for value in found if len(value) >= 3}


def _everything(client: Any, anonymous: Any) -> None:
    """Every fixture through every channel: accepted, re-sent, refused, read back, searched by NHS number."""
    for path in sorted(FIXTURES.glob("*.json")):
        for _ in range(2):  # accepted, then re-sent
            if path.name.endswith(".bundle.json"):
                client.post("/fhir/$process-message", content=path.read_bytes(), headers=bars_headers())
            else:
                client.post("/ingest/nhs111", content=path.read_bytes())
    for path in (ROOT_FIXTURES / "mhpl").glob("*.json"):
        client.post("/ingest/mhpl", content=path.read_bytes())
    for path in (ROOT_FIXTURES / "rio").glob("*.hl7"):
        client.post("/ingest/hl7v2", content=path.read_bytes())
        client.post("/ingest/hl7v2", content=path.read_bytes().replace(b"|2.4\r", b"|2.9\r"))  # refused too
    for path in (ROOT_FIXTURES / "measures").glob("*.json"):
        client.post("/fhir/QuestionnaireResponse", content=path.read_bytes())
    client.post("/ingest/pcmis", content=(ROOT_FIXTURES / "pcmis" / "contacts.csv").read_bytes())
    client.post("/ingest/systmone", content=(ROOT_FIXTURES / "systmone" / "contacts.csv").read_bytes())
    task = client.get("/fhir/Task", params={"_count": 1}).json()["entry"][0]["resource"]
    cleo = (ROOT_FIXTURES / "cleo" / "consultation-registered.update.json").read_text().replace("REPLACE-WITH-TASK-ID", task["id"])
    client.post("/ingest/cleo", content=cleo)
    client.get(f"/export/cleo/{task['id']}")
    bad = json.loads((FIXTURES / "option2-standard.case.json").read_text())
    bad["patient"]["nhs_number"] = "9990000019"
    client.post("/ingest/nhs111", content=json.dumps(bad))
    for example in BARS_EXAMPLES.glob("*.json"):
        client.post("/fhir/$process-message", content=example.read_bytes(), headers=bars_headers())
    for nhs in ("9990000018", "9990000042", "9990000019"):
        client.get("/fhir/Patient", params={"identifier": f"https://fhir.nhs.uk/Id/nhs-number|{nhs}"})
        anonymous.get("/fhir/Patient", params={"identifier": f"https://fhir.nhs.uk/Id/nhs-number|{nhs}"})  # 401, logged
        client.get(f"/fhir/Patient/{nhs}")  # an identifier where an id goes: 404, logged
    client.get("/fhir/AuditEvent", params={"_count": 200})


def _leaks(text: str) -> list[str]:
    return sorted(value for value in _identifiers() | {"9990000019"} if value in text)


def test_logs_of_accepted_resent_and_refused_messages_hold_no_patient_identifiers(client, anonymous, capsys) -> None:
    _everything(client, anonymous)
    logs = capsys.readouterr().err
    assert "message.accepted" in logs and "message.refused" in logs and "message.resent" in logs and "request.refused" in logs
    assert _leaks(logs) == []


def test_mllp_logs_hold_no_patient_identifiers(app, capsys) -> None:  # type: ignore[no-untyped-def]
    from adapters.hl7v2 import frame
    from tests.test_hl7v2 import read_acks, running_mllp

    with running_mllp(app) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(30)
        messages = sorted((ROOT_FIXTURES / "rio").glob("*.hl7"))
        sock.sendall(b"".join(frame(p.read_bytes()) for p in messages))
        read_acks(sock, len(messages))
    logs = capsys.readouterr().err
    assert "hl7.accepted" in logs or "hl7.refused" in logs
    assert _leaks(logs) == []


@pytest.mark.run_last
def test_the_logs_of_the_whole_test_run_hold_no_fixture_identifiers_or_clinical_text(client, anonymous) -> None:
    """Runs last: greps every log line the test run wrote (this process and the gateway processes it started)."""
    _everything(client, anonymous)  # so even alone this test has a full scenario to look at
    logs = RUN_LOG.read_text(encoding="utf-8")
    lines = logs.splitlines()
    assert len(lines) > 100 and all(line.startswith("{") for line in lines[:50])
    events = {json.loads(line)["event"] for line in lines if line.startswith("{")}
    assert {"message.accepted", "message.refused", "request.refused"} <= events
    assert _leaks(logs) == []


def test_a_store_failure_while_ingesting_is_logged_with_its_place_but_not_the_values_it_quotes(database_url: str, tmp_path: Path) -> None:
    """`iap-gateway serve`, its store refusing every NHS number: over HTTP a 500, over MLLP an AR, each logged with a
    reference and a traceback by its frames and exception types, without the NHS number that the database's error text
    and the failed statement's parameters hold."""
    engine = make_engine(database_url)
    migrate(engine)
    with make_sessionmaker(engine).begin() as session:
        _, key = add_client(session, "privacy", frozenset({"ingest:nhs111"}), datetime.now(UTC))
    case, adt = FIXTURES / "option2-red-flag.case.json", ROOT_FIXTURES / "rio" / "adt-a04-register.hl7"
    nhs_numbers = {json.loads(case.read_text())["patient"]["nhs_number"], "9990000131"}  # the case's and the ADT's patients
    port, mllp_port = free_port(), free_port()
    log_path = tmp_path / "serve.log"
    env = {**os.environ, "DATABASE_URL": database_url, "IAP_MLLP_PORT": str(mllp_port), "IAP_TICK_SECONDS": "0", "IAP_DELIVER_SECONDS": "0"}
    try:
        with refusing_nhs_numbers(engine), log_path.open("wb") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=log
            )
            try:
                wait_healthy(port)
                reply = httpx.post(
                    f"http://127.0.0.1:{port}/ingest/nhs111", content=case.read_bytes(), headers=bearer(key or ""), timeout=30
                )
                with socket.create_connection(("127.0.0.1", mllp_port), timeout=30) as sock:
                    sock.sendall(frame(adt.read_bytes()))
                    (ack,) = read_acks(sock, 1)
            finally:
                server.terminate()
                server.wait(timeout=20)
    finally:
        engine.dispose()
    assert reply.status_code == 500 and reply.json()["resourceType"] == "OperationOutcome"
    logs = log_path.read_text(encoding="utf-8")
    crashed = next(json.loads(line) for line in logs.splitlines() if '"request.crashed"' in line)
    assert crashed["reference"] in reply.text  # the reply's reference finds the log line
    assert "Exception in ASGI application" in logs and 'File "' in logs  # the traceback, by its frames
    assert "sqlalchemy.exc." in logs and "(message not logged: it may quote patient data)" in logs
    assert ack.split(b"\rMSA|", 1)[1].startswith(b"AR|RIO-ADT-0002|not stored: send it again (internal error ")
    failed = next(json.loads(line) for line in logs.splitlines() if '"mllp.failed"' in line)
    assert failed["reference"].encode() in ack and f"MLLP message not taken (reference {failed['reference']})" in logs
    assert logs.count("(message not logged: it may quote patient data)") >= 4  # both tracebacks, each of two exceptions
    assert not nhs_numbers & set(re.findall(r"\d{10}", logs)) and _leaks(logs) == []
