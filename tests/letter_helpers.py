"""Shared steps for the letter tests: a completed CAS case, PCMIS contacts, a letter request in the contract's shape."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, fixture_bytes, task_of
from tests.test_cas_operations import params  # noqa: F401 - re-exported: the letter tests build Parameters with it

ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
LETTER_TYPES = "https://fhir.iap-gateway.org/CodeSystem/letter-type"
RULES = "https://fhir.iap-gateway.org/CodeSystem/domain-rule"
VALIDATOR = ROOT.parent / "shared" / "tools" / "fhir-validate" / "fhir-validate"
NOTES = "Synthetic consultation: low mood for three weeks, no current plans to harm self; safety plan agreed; GP review in 2 weeks."


def completed_case(client, fixture: str = "option2-standard.case.json", notes: str = NOTES, **outcome: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """A 111 referral -> a CAS case -> a registered practitioner's consultation -> completed (CAS-13); `outcome`: plan,
    follow_up, safety_advice."""
    task = task_of(client.post("/ingest/nhs111", content=fixture_bytes(fixture)).json())
    done = client.post(
        f"/fhir/Task/{task['id']}/$end-assessment",
        content=params(practitioner="Dr Synthetic Registered", registered=True, notes=notes, **outcome),
    )
    assert done.status_code == 200, done.text
    return done.json()  # type: ignore[no-any-return]


def pcmis_contacts(client) -> str:  # type: ignore[no-untyped-def]
    """The PCMIS fixture (patient 9990000158: self-referred, GP not to be contacted, TT-02); the patient id."""
    reply = client.post(
        "/ingest/pcmis", content=(ROOT / "fixtures" / "pcmis" / "contacts.csv").read_bytes(), headers={"Content-Type": "text/csv"}
    )
    assert reply.status_code == 200, reply.text
    found = client.get("/fhir/Patient", params={"identifier": "https://fhir.nhs.uk/Id/nhs-number|9990000158"}).json()
    return str(found["entry"][0]["resource"]["id"])


def letter_request(
    request_id: str,
    letter_type: str,
    patient_id: str,
    about: list[str],
    *,
    recipients: list[dict[str, Any]] | None = None,
    rules: tuple[str, ...] = ("TT-14",),
    lines: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A letter request exactly as docs/letters.md describes it (the lead's issue-6 code sends these)."""
    return {
        "resourceType": "CommunicationRequest",
        "id": request_id,
        "status": "active",
        "category": [{"coding": [{"system": LETTER_TYPES, "code": letter_type}]}],
        "subject": {"reference": f"Patient/{patient_id}"},
        "recipient": recipients or [{"identifier": {"system": ODS, "value": "L81001"}, "display": "Synthetic Surgery"}],
        "sender": {"identifier": {"system": ODS, "value": "RWN"}, "display": "NHS Talking Therapies North Essex (synthetic)"},
        "requester": {"display": "PWP Synthetic One"},
        "about": [{"reference": ref} for ref in about],
        "reasonCode": [{"coding": [{"system": RULES, "code": rule} for rule in rules]}],
        **({"payload": [{"contentString": line} for line in lines]} if lines else {}),
        "authoredOn": "2026-11-23T12:00:00Z",
    }


def fhir_validate(tmp_path: Path, name: str, resource: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    assert VALIDATOR.exists(), f"the validator is expected at {VALIDATOR}"
    folder = tmp_path / f"validate-{name}"
    folder.mkdir()
    (folder / f"{name}.json").write_text(json.dumps(resource))
    return subprocess.run([str(VALIDATOR), "--errors-only", str(folder)], capture_output=True, text=True, timeout=300)


def outbox(client, **query: str) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    reply = client.get("/outbox", params=query)
    assert reply.status_code == 200, reply.text
    return reply.json()["entries"]  # type: ignore[no-any-return]


def write_routing(
    folder: Path,
    mesh_mailboxes: dict[str, str] | None = None,
    fhir_endpoints: dict[str, str] | None = None,
    gpprovider: bool = True,
    dob_format: str = "%Y%m%d",
) -> Path:
    """A routing file for one test (the deployment's own file has no mailboxes)."""
    import yaml

    path = folder / "routing.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "schema": "delivery-routing/1",
                "version": "test",
                "sender": {"ods": "RVN", "name": "IAP MHCAS (test)"},
                "gpprovider": {"enabled": gpprovider, "dob_format": dob_format},
                "mesh_mailboxes": mesh_mailboxes or {},
                "fhir_endpoints": fhir_endpoints or {},
            }
        )
    )
    return path


def make_deliverer(app, clock, **settings: Any):  # type: ignore[no-untyped-def]
    """The delivery worker on the test app's database, configured with `settings` (routing file, MESH, retries)."""
    from gateway.letters.outbox.worker import deliverer_from_settings

    return deliverer_from_settings(app.state.sessions, clock, app.state.settings.model_copy(update=settings))
