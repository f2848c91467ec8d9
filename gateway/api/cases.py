"""CAS case operations over FHIR: POST /fhir/Task/{id}/$<operation> (Parameters), GET $explain; no free edits."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from adapters.problems import GatewayInputError, Kind, Problem
from gateway.api.deps import SessionDep, SettingsDep
from gateway.api.examples import CAS_OPERATION_EXAMPLES
from gateway.api.ingest import body_of, read_body
from gateway.api.responses import FhirResponse
from gateway.cas.cases import explain
from gateway.cas.rules.ops import OPERATIONS

__all__ = ["router"]

router = APIRouter(prefix="/fhir/Task")
_OPS = ", ".join(f"${name}" for name in sorted(OPERATIONS))


@router.get("/{task_id}/$explain", summary="Every decision on a case in plain words: rule ids, inputs, who and when")
def task_explain(task_id: str, session: SessionDep) -> Response:
    return FhirResponse(explain(session, task_id))


@router.post(
    "/{task_id}/{operation}",
    summary=f"Operate on a CAS case ({_OPS}); body: FHIR Parameters",
    description="Scope `cas:operate`. The operation's rules run on the case as stored (CAS-07..CAS-14); 200 with the new "
    "Task (ETag: its version), stored with a Provenance; 409 with an OperationOutcome naming the rule when refused, and "
    "nothing changes. One example per operation below.",
    openapi_extra=body_of("application/fhir+json", "FHIR Parameters for the operation", examples=CAS_OPERATION_EXAMPLES),
)
async def task_operation(request: Request, task_id: str, operation: str, settings: SettingsDep) -> Response:
    if not operation.startswith("$"):
        raise GatewayInputError(Problem(Kind.NOT_SUPPORTED, "operation", f"POST /fhir/Task/{{id}}/$<operation>: one of {_OPS}"))
    raw = await read_body(request, settings.max_body_bytes)
    task = await run_in_threadpool(request.app.state.cases.run, task_id, operation[1:], raw)
    return FhirResponse(task, headers={"ETag": f'W/"{task["meta"]["versionId"]}"'})


@router.api_route("/{task_id}", methods=["PUT", "PATCH", "DELETE"], include_in_schema=False)
def task_free_edit(task_id: str) -> Response:
    """CAS-08 and the audit trail: a case changes only through operations, so a priority can never be edited down."""
    return FhirResponse(
        {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "error",
                    "code": "not-supported",
                    "expression": ["Task"],
                    "diagnostics": f"CAS cases change only through operations ({_OPS}); direct edits are refused (CAS-08)",
                }
            ],
        },
        status_code=405,
        headers={"Allow": "GET"},
    )
