"""Primary care and Talking Therapies pathways over FHIR: route a referral, operate on episodes, explain decisions."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from adapters.problems import GatewayInputError, Kind, Problem
from gateway.api.deps import SessionDep, SettingsDep
from gateway.api.examples import EPISODE_OPERATION_EXAMPLES
from gateway.api.ingest import answer, body_of, read_body
from gateway.api.responses import FhirResponse
from gateway.api.search import Search, split_list
from gateway.cas.cases import explain_resource
from gateway.pathways.rules.steps import EPISODE_OPERATIONS

__all__ = ["router"]

router = APIRouter(prefix="/fhir")
_OPS = ", ".join(f"${name}" for name in EPISODE_OPERATIONS)


@router.post(
    "/ServiceRequest/$route",
    status_code=201,
    summary="Route a referral to a primary care or Talking Therapies pathway (docs/formats/pathway-referral.md): "
    "accept (step, team), signpost or redirect, with the rule trace; a re-sent referral id gets its original reply",
    description="Scope `ingest:referral`. 201 with a Parameters decision (outcome, step, team, every rule id and reason) "
    "and the EpisodeOfCare, Tasks and letters it made; 400/422 OperationOutcome for a referral that cannot be read.",
    openapi_extra=body_of(
        "application/fhir+json",
        "a FHIR ServiceRequest (docs/formats/pathway-referral.md)",
        "pathways/tt-gp-referral-step-3.servicerequest.json",
    ),
)
async def route_referral(request: Request, settings: SettingsDep) -> Response:
    return await answer(request, settings.max_body_bytes, request.app.state.pathways.refer)


@router.get("/ServiceRequest/{request_id}/$explain", summary="Why a referral was routed as it was: rule ids, inputs, rule file version")
def explain_referral(request_id: str, session: SessionDep) -> Response:
    return FhirResponse(explain_resource(session, "ServiceRequest", request_id))


@router.get("/EpisodeOfCare/{episode_id}/$explain", summary="Every decision and clock event on an episode of care, in order")
def explain_episode(episode_id: str, session: SessionDep) -> Response:
    return FhirResponse(explain_resource(session, "EpisodeOfCare", episode_id))


@router.get("/EpisodeOfCare", summary="Search episodes of care: patient, status, service (pathway service id), _id, _lastUpdated")
def episode_search(request: Request, session: SessionDep) -> Response:
    search = Search(request, "EpisodeOfCare")
    resources, total = search.resources(session, status=split_list(search.get("status")), service=search.get("service"))
    return FhirResponse(search.bundle(resources, total))


@router.post(
    "/EpisodeOfCare/{episode_id}/{operation}",
    summary=f"Operate on an episode of care ({_OPS}); body: FHIR Parameters",
    description="Scope `pathway:operate`. The pathway's rules run on the episode (PC-xx, TT-xx; parameters: "
    "docs/formats/pathway-referral.md); 200 with the new EpisodeOfCare (ETag: its version); a refusal is an "
    "OperationOutcome naming the parameter and changes nothing. One example per operation below.",
    openapi_extra=body_of("application/fhir+json", "FHIR Parameters for the operation", examples=EPISODE_OPERATION_EXAMPLES),
)
async def episode_operation(request: Request, episode_id: str, operation: str, settings: SettingsDep) -> Response:
    if not operation.startswith("$"):
        raise GatewayInputError(Problem(Kind.NOT_SUPPORTED, "operation", f"POST /fhir/EpisodeOfCare/{{id}}/$<operation>: one of {_OPS}"))
    raw = await read_body(request, settings.max_body_bytes)
    episode = await run_in_threadpool(request.app.state.pathways.operate, episode_id, operation[1:], raw)
    return FhirResponse(episode, headers={"ETag": f'W/"{episode["meta"]["versionId"]}"'})
