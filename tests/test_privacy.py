"""No patient identifiers or names in the logs (structlog JSON lines), for accepted and refused input alike."""

from __future__ import annotations

import json

from tests.conftest import BARS_EXAMPLES, FIXTURES, bars_headers


def _identifiers() -> set[str]:
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
    for path in (FIXTURES.parent / "mhpl").glob("*.json"):
        patient = json.loads(path.read_text())["patient"]
        found |= {patient["nhs_number"], patient["family"], *patient["given"], patient["postcode"]}
    for path in (FIXTURES.parent / "rio").glob("*.hl7"):
        pid = next(seg for seg in path.read_bytes().decode().split("\r") if seg.startswith("PID|"))
        fields = pid.split("|")
        found |= {fields[3].split("^")[0], *[part for part in fields[5].split("^")[:2] if part]}
    found.add("3478526985")  # the public examples' number
    return found


def test_logs_of_accepted_resent_and_refused_messages_hold_no_patient_identifiers(client, capsys) -> None:
    for path in sorted(FIXTURES.glob("*.json")):
        for _ in range(2):  # accepted, then re-sent
            if path.name.endswith(".bundle.json"):
                client.post("/fhir/$process-message", content=path.read_bytes(), headers=bars_headers())
            else:
                client.post("/ingest/nhs111", content=path.read_bytes())
    for path in (FIXTURES.parent / "mhpl").glob("*.json"):
        client.post("/ingest/mhpl", content=path.read_bytes())
    for path in (FIXTURES.parent / "rio").glob("*.hl7"):
        client.post("/ingest/hl7v2", content=path.read_bytes())
        client.post("/ingest/hl7v2", content=path.read_bytes().replace(b"|2.4\r", b"|2.9\r"))  # refused too
    bad = json.loads((FIXTURES / "option2-standard.case.json").read_text())
    bad["patient"]["nhs_number"] = "9990000019"
    client.post("/ingest/nhs111", content=json.dumps(bad))
    for example in BARS_EXAMPLES.glob("*.json"):
        client.post("/fhir/$process-message", content=example.read_bytes(), headers=bars_headers())
    logs = capsys.readouterr().err
    assert "message.accepted" in logs and "message.refused" in logs and "message.resent" in logs
    leaked = sorted(value for value in _identifiers() | {"9990000019"} if value in logs)
    assert leaked == []
