"""The API fuzzed against its own OpenAPI description (schemathesis): whatever is sent, never a 500.

Every operation in /openapi.json gets requests that fit its description (positive) and requests that
break it (negative), authenticated as a client with every scope so they reach the routes
(unauthenticated refusals are tested in tests/test_security.py). A small example count per operation
keeps CI short; the nightly run (`pytest -m nightly`) sends 25 times as many. (schemathesis's own
pytest plugin does not run under pytest 9, so the operations are walked here, each with its
hypothesis strategy.) Every operation taking a body is also sent JSON built to break a reader (tests/hostile.py).
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.core.result import Ok
from schemathesis.generation import GenerationMode

from tests.conftest import bearer

EXAMPLES_PER_OPERATION = 8
NIGHTLY_EXAMPLES_PER_OPERATION = 200


@schemathesis.serializer("text/csv", "x-application/hl7-v2+er7")
def _as_text(ctx: Any, value: Any) -> bytes:
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else str(value).encode()


@pytest.mark.parametrize(
    "examples",
    [EXAMPLES_PER_OPERATION, pytest.param(NIGHTLY_EXAMPLES_PER_OPERATION, marks=pytest.mark.nightly, id="nightly")],
)
def test_no_request_the_description_allows_or_breaks_gets_a_server_error(app: Any, all_scopes_key: str, examples: int) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()  # an operation the description does not let schemathesis load
        operations.append(result.ok())
    assert len(operations) >= 25, [op.label for op in operations]
    failures: list[str] = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case: Any) -> None:
                response = case.call(headers=bearer(all_scopes_key))
                if response.status_code >= 500:
                    failures.append(f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:200]}")
                elif response.status_code >= 400 and "application/fhir+json" in str(response.headers.get("content-type")):
                    assert response.json()["resourceType"] == "OperationOutcome", response.text[:200]

            check()
    assert failures == []


# The documents each JSON route takes, for JSON built to break a reader (tests/hostile.py); any other route that takes
# a body gets a Parameters document and an empty object (path parameters filled by tests.hostile.filled_paths).
_DOCUMENTS = {
    "/ingest/nhs111": "nhs111/option2-red-flag.case.json",
    "/ingest/mhpl": "mhpl/police-call.mhpl.json",
    "/ingest/cleo": "cleo/consultation-registered.update.json",
    "/fhir/$process-message": "nhs111/bars-dx13-self-harm-flag.bundle.json",
    "/fhir/ServiceRequest/$route": "pathways/tt-gp-referral-step-3.servicerequest.json",
    "/fhir/QuestionnaireResponse": "measures/phq-9-lhc-forms.qr.json",
}
_PARAMETERS = b'{"resourceType":"Parameters","parameter":[{"name":"practitioner","valueString":"CH"},{"name":"n","valueInteger":1}]}'


@pytest.mark.parametrize(
    "examples",
    [EXAMPLES_PER_OPERATION, pytest.param(NIGHTLY_EXAMPLES_PER_OPERATION, marks=pytest.mark.nightly, id="nightly")],
)
def test_no_json_built_to_break_a_reader_gets_a_server_error_from_any_route_taking_a_body(client: Any, examples: int) -> None:
    """Deep nesting, duplicate keys and extreme numbers (tests/hostile.py) to every operation in /openapi.json with a
    request body: a route added later is fuzzed without anyone adding it here."""
    from tests.conftest import ROOT
    from tests.hostile import filled_paths, hostile_json

    description = client.get("/openapi.json").json()
    failures: list[str] = []
    taking = [(m, t, op) for t, ops in description["paths"].items() for m, op in ops.items() if "requestBody" in op]
    assert len(taking) >= 10, [t for _, t, _ in taking]
    for method, template, operation in taking:
        media = next(iter(operation["requestBody"]["content"]))
        name = _DOCUMENTS.get(template)
        documents = [(ROOT / "fixtures" / name).read_bytes()] if name else [_PARAMETERS, b"{}"]
        _fuzz_route(client, method.upper(), media, filled_paths(template), hostile_json(documents), examples, failures)
    assert failures == []


def _fuzz_route(client: Any, method: str, media: str, urls: list[str], bodies: Any, examples: int, failures: list[str]) -> None:
    from tests.conftest import bars_headers

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(body=bodies, url=st.sampled_from(urls))
    def check(body: bytes, url: str) -> None:
        headers = {"Content-Type": media} | (bars_headers() if "process-message" in url else {})
        response = client.request(method, url, content=body, headers=headers)
        if response.status_code >= 500:
            failures.append(f"{method} {url}: {response.status_code} {body[:80]!r} {response.text[:160]}")

    check()
