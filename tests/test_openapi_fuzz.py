"""The API fuzzed against its own OpenAPI description (schemathesis): whatever is sent, never a 500.

Every operation in /openapi.json gets requests that fit its description (positive) and requests that
break it (negative), authenticated as a client with every scope so they reach the routes
(unauthenticated refusals are tested in tests/test_security.py). A small example count per operation
keeps CI short; the nightly run (`pytest -m nightly`) sends 25 times as many. (schemathesis's own
pytest plugin does not run under pytest 9, so the operations are walked here, each with its
hypothesis strategy.)
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
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
