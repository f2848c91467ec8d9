"""Pictures of the letters as they go out, one per audience (issue 34): `python -m gateway.letters.samples docs/`.

Renders two synthetic letters with the same code the outbox uses (letter view -> type template -> PDF), then
draws page 1 of each as a PNG with `pdftoppm` (Debian's poppler-utils): docs/letter-gp.png, a CAS consultation
report to the GP practice; docs/letter-client.png, a Talking Therapies progress update written to a client whose
GP letter was withheld (TT-02, TT-14). No database and no patient data: everything here is synthetic.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fhir_mapping.letters.document import letter_view
from fhir_mapping.letters.pdf import render_pdf
from fhir_mapping.letters.request import Recipient, parse_letter_request
from gateway.cas.rules.schema import load_rules
from gateway.pathways.rules.schema import load_pathways

__all__ = ["render_samples"]

ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
WHEN = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "sample-patient",
    "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9990000018"}],
    "name": [{"given": ["Alex"], "family": "Testpatient"}],
    "birthDate": "1988-04-12",
}
NOTES: dict[str, Any] = {
    "resourceType": "DocumentReference",
    "id": "sample-notes",
    "type": {"text": "Consultation notes"},
    "date": "2026-11-23T11:40:00+00:00",
    "author": [{"display": "Dr Synthetic Registered"}],
    "content": [
        {
            "attachment": {
                "contentType": "text/plain",
                "data": base64.b64encode(
                    b"Low mood for three weeks, no current plans to harm self; safety plan agreed; GP review in 2 weeks."
                ).decode(),
            }
        }
    ],
}
SCORES = [
    {
        "resourceType": "Observation",
        "id": f"sample-{name}",
        "code": {"text": f"{name} total"},
        "effectiveDateTime": "2026-11-16T10:00:00+00:00",
        "valueInteger": score,
        "interpretation": [{"text": band}],
    }
    for name, score, band in (("PHQ-9", 9, "Mild"), ("GAD-7", 7, "Mild"))
]


def _request(request_id: str, letter_type: str, signed_by: str, lines: list[str]) -> dict[str, Any]:
    return {
        "resourceType": "CommunicationRequest",
        "id": request_id,
        "status": "active",
        "category": [{"coding": [{"system": "https://fhir.iap-gateway.org/CodeSystem/letter-type", "code": letter_type}]}],
        "subject": {"reference": "Patient/sample-patient"},
        "recipient": [{"identifier": {"system": ODS, "value": "L81001"}}],
        "requester": {"display": signed_by},
        "reasonCode": [{"coding": [{"system": "https://fhir.iap-gateway.org/CodeSystem/domain-rule", "code": "TT-14"}]}],
        "payload": [{"contentString": line} for line in lines],
        "authoredOn": "2026-11-23T12:00:00Z",
    }


def _contact(service_id: str) -> tuple[str, str, list[str]]:
    rules = load_rules().services.get(service_id) or load_pathways().services[service_id]
    service = rules.service
    contact = service.contact
    return service.name, service.provider_ods, [*contact.address, f"Telephone: {contact.telephone}", f"Email: {contact.email}"]


def render_samples(folder: Path) -> list[Path]:
    """Write letter-gp.png and letter-client.png into `folder`; their paths."""
    pdftoppm = shutil.which("pdftoppm")
    if pdftoppm is None:
        raise SystemExit("pdftoppm not found: apt-get install -y poppler-utils")
    name, ods, lines = _contact("bnssg")
    gp = parse_letter_request(_request("sample-gp", "cas-consultation-report", "Dr Synthetic Registered", []))
    gp_view = letter_view(
        gp, "sample-gp", PATIENT, [NOTES], [(Recipient("L81001", False), "GP practice (L81001)")], name, WHEN,
        audience="gp", contact=lines, sender_ods=ods,
    )  # fmt: skip
    name, ods, lines = _contact("north-essex-mid")
    client = parse_letter_request(_request("sample-client", "tt-progress", "PWP Synthetic One", ["Continuing guided self-help."]))
    client_view = letter_view(
        client, "sample-client", PATIENT, SCORES, [(Recipient(None, True), "Alex Testpatient (the patient)")], name, WHEN,
        audience="patient", contact=lines, sender_ods=ods,
    )  # fmt: skip
    out = []
    with tempfile.TemporaryDirectory() as scratch:
        for audience, view in (("gp", gp_view), ("client", client_view)):
            pdf = Path(scratch) / f"letter-{audience}.pdf"
            pdf.write_bytes(render_pdf(view, WHEN))
            target = folder / f"letter-{audience}"
            subprocess.run([pdftoppm, "-png", "-r", "60", "-f", "1", "-l", "1", "-singlefile", str(pdf), str(target)], check=True)
            out.append(target.with_suffix(".png"))
    return out


if __name__ == "__main__":
    for path in render_samples(Path(sys.argv[1] if len(sys.argv) > 1 else "docs")):
        print(path)
