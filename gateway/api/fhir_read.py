"""FHIR REST read API: metadata, read, Task search (with paging), Patient search by identifier."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from adapters.problems import GatewayInputError, Kind, Problem
from fhir_mapping.datetimes import to_fhir_instant
from fhir_mapping.fhir import CapabilityStatement, build, to_json_dict
from gateway.api.audit import AUDIT_PARAMS
from gateway.api.deps import ClockDep, SessionDep
from gateway.api.responses import FhirResponse
from gateway.api.search import paging, refuse_unknown, searchset, split_list
from gateway.audit import note
from gateway.store.repo import (
    ResourceQuery,
    TaskQuery,
    find_by_identifier,
    get_resource,
    search_resources,
    search_tasks,
    sortable_task_params,
)

__all__ = ["router", "READABLE_TYPES"]

router = APIRouter(prefix="/fhir")

READABLE_TYPES = (
    "Task",
    "Patient",
    "ServiceRequest",
    "Encounter",
    "QuestionnaireResponse",
    "Flag",
    "Observation",
    "CommunicationRequest",
    "Provenance",
    "DocumentReference",
    "EpisodeOfCare",
    "Consent",
    "CarePlan",
    "Bundle",
)
_TASK_PARAMS = {"status", "business-status", "patient", "priority", "_sort", "_count", "_offset", "_format"}
_PATIENT_PARAMS = {"identifier", "_format"}
_ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


@router.get("/metadata", summary="CapabilityStatement: what this server really supports")
def metadata(clock: ClockDep) -> Response:
    return FhirResponse(capability_statement(to_fhir_instant(clock.now())))


@router.get("/Task", summary="Search CAS queue Tasks: status, business-status, patient, priority, _sort, _count, _offset")
def task_search(request: Request, session: SessionDep) -> Response:
    params = request.query_params
    refuse_unknown(params.keys(), _TASK_PARAMS, "Task")
    count, offset = paging(params)
    sort = []
    for name in (params.get("_sort") or "").split(","):
        if not name:
            continue
        key = name.removeprefix("-")
        if key not in sortable_task_params():
            raise GatewayInputError(
                Problem(Kind.NOT_SUPPORTED, "_sort", f"cannot sort Tasks by {key!r}; use one of {sortable_task_params()}")
            )
        sort.append((key, name.startswith("-")))
    query = TaskQuery(
        status=split_list(params.get("status")),
        business_status=[v.split("|")[-1] for v in split_list(params.get("business-status")) or []] or None,
        priority=split_list(params.get("priority")),
        patient=params.get("patient"),
        sort=sort,
        count=count,
        offset=offset,
    )
    resources, total = search_tasks(session, query)
    return FhirResponse(searchset(request, resources, total, count, offset))


@router.get("/Patient", summary="Search Patients by identifier (system|value, e.g. https://fhir.nhs.uk/Id/nhs-number|9990000018)")
def patient_search(request: Request, session: SessionDep) -> Response:
    params = request.query_params
    refuse_unknown(params.keys(), _PATIENT_PARAMS, "Patient")
    token = params.get("identifier")
    if not token:
        raise GatewayInputError(Problem(Kind.REQUIRED, "identifier", "Patient search needs identifier=system|value"))
    system, _, value = token.rpartition("|")
    resources = find_by_identifier(session, "Patient", system or None, value)
    return FhirResponse(searchset(request, resources, len(resources), len(resources) or 1, 0))


@router.get("/CommunicationRequest", summary="Pending notifications (e.g. CAS-15 GP notifications): status, patient")
def communication_request_search(request: Request, session: SessionDep) -> Response:
    params = request.query_params
    refuse_unknown(params.keys(), {"status", "patient", "_count", "_offset", "_format"}, "CommunicationRequest")
    count, offset = paging(params)
    query = ResourceQuery(
        "CommunicationRequest", patient=params.get("patient"), status=split_list(params.get("status")), count=count, offset=offset
    )
    resources, total = search_resources(session, query)
    return FhirResponse(searchset(request, resources, total, count, offset))


@router.get("/{resource_type}/{resource_id}", summary="Read a resource by id")
def read(resource_type: str, resource_id: str, session: SessionDep) -> Response:
    if resource_type not in READABLE_TYPES:
        raise GatewayInputError(
            Problem(Kind.NOT_SUPPORTED, "type", f"resource type {resource_type[:40]!r} is not served here; see /fhir/metadata")
        )
    if not _ID_RE.match(resource_id):
        raise GatewayInputError(Problem(Kind.VALUE, "id", "not a valid FHIR id"))
    resource = get_resource(session, resource_type, resource_id)
    if resource is None:
        raise GatewayInputError(Problem(Kind.NOT_FOUND, "id", f"{resource_type}/{resource_id} is not known"))
    note(resource)
    return FhirResponse(resource, headers={"ETag": f'W/"{resource["meta"]["versionId"]}"'})


def capability_statement(date: str) -> dict[str, Any]:
    """What this server supports, and nothing it does not."""

    def resource(rtype: str, interactions: list[str], params: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": rtype, "interaction": [{"code": code} for code in interactions]}
        if params:
            entry["searchParam"] = [{"name": name, "type": kind} for name, kind in params.items()]
        return entry | extra

    statement = build(
        CapabilityStatement,
        status="active",
        date=date,
        kind="instance",
        software={"name": "iap-gateway", "version": "0.1.0"},
        implementation={"description": "IAP gateway: NHS 111 referrals to the MHCAS CAS queue; outcome measures"},
        fhirVersion="4.0.1",
        format=["application/fhir+json", "json"],
        rest=[
            {
                "mode": "server",
                "resource": [
                    resource(
                        "Task",
                        ["read", "search-type"],
                        {"status": "token", "business-status": "token", "patient": "reference", "priority": "token"},
                    ),
                    resource(
                        "Patient",
                        ["read", "search-type"],
                        {"identifier": "token"},
                        operation=[
                            {"name": "outcome-summary", "definition": "https://fhir.iap-gateway.org/OperationDefinition/outcome-summary"}
                        ],
                    ),
                    resource("Questionnaire", ["read", "search-type"], {"url": "uri", "name": "string", "code": "token"}),
                    resource(
                        "QuestionnaireResponse", ["create", "read", "search-type"], {"patient": "reference", "questionnaire": "reference"}
                    ),
                    resource("Observation", ["read", "search-type"], {"patient": "reference", "code": "token", "date": "date"}),
                    resource("CommunicationRequest", ["create", "read", "search-type"], {"status": "token", "patient": "reference"}),
                    *[resource(t, ["read"]) for t in ("ServiceRequest", "Encounter", "Flag", "Provenance", "DocumentReference", "Bundle")],
                    resource("AuditEvent", ["read", "search-type"], AUDIT_PARAMS),
                ],
                "security": {
                    "service": [
                        {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "OAuth"}]}
                    ],
                    "description": "Every request needs 'Authorization: Bearer <API key or access token>'; access tokens come from "
                    "POST /oauth2/token for a signed JWT client assertion (RS512, private_key_jwt). Scopes per route: README, Security.",
                },
                "operation": [
                    {"name": "process-message", "definition": "http://hl7.org/fhir/OperationDefinition/MessageHeader-process-message"}
                ],
            }
        ],
    )
    return to_json_dict(statement)
