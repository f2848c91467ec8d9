"""Example request bodies for the API description (/docs, /redoc): each inbound format's example is one of the
synthetic fixtures the golden tests also send (999-range NHS numbers), read from fixtures/; each operation's
example is a `Parameters` body the operation takes (the parameter tables: docs/formats/pathway-referral.md,
gateway/cas/rules/ops.py). tests/test_api_docs.py sends them.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

__all__ = [
    "fixtures_dir",
    "fixture_example",
    "CAS_OPERATION_EXAMPLES",
    "EPISODE_OPERATION_EXAMPLES",
    "RISK_LEVEL_EXAMPLE",
    "LETTER_REQUEST_EXAMPLE",
    "parameters",
]


def fixtures_dir() -> Path:
    """IAP_FIXTURES_DIR, else the repo's fixtures/ (editable install), else ./fixtures (the container image)."""
    configured = os.environ.get("IAP_FIXTURES_DIR")
    if configured:
        return Path(configured)
    beside_code = Path(__file__).resolve().parents[2] / "fixtures"
    return beside_code if beside_code.is_dir() else Path.cwd() / "fixtures"


@cache
def fixture_example(name: str) -> Any:
    """The fixture `name` (e.g. "nhs111/option2-standard.case.json"): parsed JSON, or text; None where the fixtures
    are not installed (a wheel without them): the description then goes without that example."""
    path = fixtures_dir() / name
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    return json.loads(text) if name.endswith(".json") else text


def parameters(**values: Any) -> dict[str, Any]:
    """A FHIR Parameters body: strings as valueString, booleans as valueBoolean, `date` as valueDateTime."""
    out = []
    for name, value in values.items():
        name = name.replace("_", "-")
        kind = "valueBoolean" if isinstance(value, bool) else "valueDateTime" if name == "date" else "valueString"
        out.append({"name": name, kind: value})
    return {"resourceType": "Parameters", "parameter": out}


# POST /fhir/Task/{id}/$<operation>: one example per CAS operation (CAS-07..CAS-14)
CAS_OPERATION_EXAMPLES: dict[str, tuple[str, dict[str, Any]]] = {
    "cn-review": (
        "CAS-07: a Clinical Navigator upgrades the case",
        parameters(practitioner="CN A", suitability="registered", priority="asap", timeframe="PT1H"),
    ),
    "record-contact-attempt": (
        "CAS-11: a safety call that did not reach the patient",
        parameters(practitioner="CN A", kind="safety-call", outcome="failed"),
    ),
    "known-service": (
        "CAS-12: document the patient's usual provider",
        parameters(practitioner="CN A", step="document", provider="Bristol CMHT"),
    ),
    "end-assessment": (
        "CAS-13: a registered practitioner completes the consultation",
        parameters(
            registered=True,
            practitioner="Dr A Clinician",
            notes="Assessed by phone; safety plan agreed.",
            plan="GP review in 1 week",
            follow_up="Crisis team call tomorrow",
            safety_advice="Call 111 (option 2) or 999 if thoughts of self-harm return",
        ),
    ),
    "ratify": (
        "CAS-13: a registered practitioner ratifies an unregistered consultation",
        parameters(registered=True, practitioner="Dr A Clinician"),
    ),
}

# POST /fhir/EpisodeOfCare/{id}/$<operation>: one example per pathway episode operation (PC-xx, TT-xx)
EPISODE_OPERATION_EXAMPLES: dict[str, tuple[str, dict[str, Any]]] = {
    "record-contact": (
        "TT-08: an attended assessment",
        parameters(kind="assessment", outcome="attended", date="2026-11-23T10:00:00+00:00", practitioner="PWP A"),
    ),
    "allocate": ("PC-07: allocate a key worker", parameters(practitioner="KW", intervention="CBT")),
    "step": ("TT-16: step down to step 2", parameters(direction="down", to="step-2", practitioner="HIT A")),
    "kit-opt-out": ("TT-10: the patient opts out of keeping-in-touch contacts", parameters(practitioner="PWP A")),
    "progress-letter": ("TT-14: send the progress letter", parameters(practitioner="PWP A")),
    "record-booking-attempt": (
        "TT-17: a failed attempt to book the initial assessment",
        parameters(date="2026-11-23T10:00:00+00:00", practitioner="Admin B"),
    ),
}

# POST /queue/$confirm-risk-level (CAS-16)
RISK_LEVEL_EXAMPLE = parameters(service="bnssg", level="high", practitioner="CN A", note="Two red cases waiting past breach")

# POST /fhir/CommunicationRequest (docs/letters.md): `subject` must name a stored Patient, so this one is a shape to copy
LETTER_REQUEST_EXAMPLE: dict[str, Any] = {
    "resourceType": "CommunicationRequest",
    "id": "progress-2026-11-23-0001",
    "status": "active",
    "category": [{"coding": [{"system": "https://fhir.iap-gateway.org/CodeSystem/letter-type", "code": "tt-progress"}]}],
    "subject": {"reference": "Patient/<a stored Patient's id>"},
    "recipient": [
        {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "L81001"}, "display": "Synthetic Surgery"}
    ],
    "requester": {"display": "PWP Synthetic One"},
    "reasonCode": [{"coding": [{"system": "https://fhir.iap-gateway.org/CodeSystem/domain-rule", "code": "TT-14"}]}],
    "payload": [{"contentString": "Six sessions of guided self-help completed; PHQ-9 down from 16 to 8."}],
    "authoredOn": "2026-11-23T12:00:00Z",
}
