"""FHIR REST read API: metadata, read, Task search (with paging), Patient search by identifier."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from starlette.responses import Response

from adapters.problems import GatewayInputError, Kind, Problem
from fhir_mapping.datetimes import to_fhir_instant
from fhir_mapping.fhir import CapabilityStatement, build, to_json_dict
from gateway.api.deps import ClockDep, SessionDep
from gateway.api.responses import FhirResponse
from gateway.store.repo import TaskQuery, find_by_identifier, get_resource, search_tasks, sortable_task_params

__all__ = ["router", "READABLE_TYPES"]

router = APIRouter(prefix="/fhir")

READABLE_TYPES = ("Task", "Patient", "ServiceRequest", "Encounter", "QuestionnaireResponse", "Flag")
_TASK_PARAMS = {"status", "business-status", "patient", "priority", "_sort", "_count", "_offset", "_format"}
_PATIENT_PARAMS = {"identifier", "_format"}
_ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
MAX_COUNT = 200


@router.get("/metadata", summary="CapabilityStatement: what this server really supports")
def metadata(clock: ClockDep) -> Response:
    return FhirResponse(capability_statement(to_fhir_instant(clock.now())))


@router.get("/Task", summary="Search CAS queue Tasks: status, business-status, patient, priority, _sort, _count, _offset")
def task_search(request: Request, session: SessionDep) -> Response:
    params = request.query_params
    _refuse_unknown(params.keys(), _TASK_PARAMS, "Task")
    count = _int_param(params.get("_count"), "_count", 50, 0, MAX_COUNT)
    offset = _int_param(params.get("_offset"), "_offset", 0, 0, 10_000_000)
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
        status=_list(params.get("status")),
        business_status=[v.split("|")[-1] for v in _list(params.get("business-status")) or []] or None,
        priority=_list(params.get("priority")),
        patient=params.get("patient"),
        sort=sort,
        count=count,
        offset=offset,
    )
    resources, total = search_tasks(session, query)
    return FhirResponse(_searchset(request, resources, total, count, offset))


@router.get("/Patient", summary="Search Patients by identifier (system|value, e.g. https://fhir.nhs.uk/Id/nhs-number|9990000018)")
def patient_search(request: Request, session: SessionDep) -> Response:
    params = request.query_params
    _refuse_unknown(params.keys(), _PATIENT_PARAMS, "Patient")
    token = params.get("identifier")
    if not token:
        raise GatewayInputError(Problem(Kind.REQUIRED, "identifier", "Patient search needs identifier=system|value"))
    system, _, value = token.rpartition("|")
    resources = find_by_identifier(session, "Patient", system or None, value)
    return FhirResponse(_searchset(request, resources, len(resources), len(resources) or 1, 0))


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
    return FhirResponse(resource, headers={"ETag": f'W/"{resource["meta"]["versionId"]}"'})


def _refuse_unknown(names: Any, allowed: set[str], rtype: str) -> None:
    unknown = sorted(set(names) - allowed)
    if unknown:
        raise GatewayInputError(
            [
                Problem(Kind.NOT_SUPPORTED, name, f"search parameter {name!r} is not supported for {rtype}; supported: {sorted(allowed)}")
                for name in unknown
            ]
        )


def _int_param(value: str | None, name: str, default: int, low: int, high: int) -> int:
    if value is None:
        return default
    if not value.isdigit() or not low <= int(value) <= high:
        raise GatewayInputError(Problem(Kind.VALUE, name, f"{name} must be a whole number from {low} to {high}"))
    return int(value)


def _list(value: str | None) -> list[str] | None:
    return [v for v in value.split(",") if v] if value else None


def _searchset(request: Request, resources: list[dict[str, Any]], total: int, count: int, offset: int) -> dict[str, Any]:
    base = str(request.base_url).rstrip("/")

    def link(relation: str, new_offset: int) -> dict[str, str]:
        query = [(k, v) for k, v in request.query_params.multi_items() if k != "_offset"] + [("_offset", str(new_offset))]
        return {"relation": relation, "url": f"{base}{request.url.path}?{urlencode(query)}"}

    links = [link("self", offset)]
    if offset + count < total and count:
        links.append(link("next", offset + count))
    if offset > 0:
        links.append(link("previous", max(0, offset - count)))
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": links,
        "entry": [{"fullUrl": f"{base}/fhir/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": "match"}} for r in resources],
    }


def capability_statement(date: str) -> dict[str, Any]:
    """What this server supports, and nothing it does not."""
    read_only = [{"type": t, "interaction": [{"code": "read"}]} for t in ("ServiceRequest", "Encounter", "QuestionnaireResponse", "Flag")]
    statement = build(
        CapabilityStatement,
        status="active",
        date=date,
        kind="instance",
        software={"name": "iap-gateway", "version": "0.1.0"},
        implementation={"description": "IAP gateway: NHS 111 referrals to the MHCAS CAS queue"},
        fhirVersion="4.0.1",
        format=["application/fhir+json", "json"],
        rest=[
            {
                "mode": "server",
                "resource": [
                    {
                        "type": "Task",
                        "interaction": [{"code": "read"}, {"code": "search-type"}],
                        "searchParam": [
                            {"name": "status", "type": "token"},
                            {"name": "business-status", "type": "token"},
                            {"name": "patient", "type": "reference"},
                            {"name": "priority", "type": "token"},
                        ],
                    },
                    {
                        "type": "Patient",
                        "interaction": [{"code": "read"}, {"code": "search-type"}],
                        "searchParam": [{"name": "identifier", "type": "token"}],
                    },
                    *read_only,
                ],
                "operation": [
                    {"name": "process-message", "definition": "http://hl7.org/fhir/OperationDefinition/MessageHeader-process-message"}
                ],
            }
        ],
    )
    return to_json_dict(statement)
