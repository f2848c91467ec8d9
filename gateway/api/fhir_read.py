"""FHIR REST read API: metadata, read, Task search (with paging and _include/_revinclude), Patient and
CommunicationRequest search."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from adapters.problems import GatewayInputError, Kind, Problem
from common.datetimes import to_fhir_instant
from gateway.api.capability import capability_statement
from gateway.api.deps import ClockDep, SessionDep
from gateway.api.fhir_search import task_includes
from gateway.api.fhir_types import READABLE_TYPES, not_served, served_read, valid_id
from gateway.api.responses import FhirResponse
from gateway.api.search import Search, split_list
from gateway.platform.store.repo import (
    ResourceQuery,
    TaskQuery,
    find_by_identifier,
    get_resource,
    search_resources,
    search_tasks,
    sortable_task_params,
)

__all__ = ["router"]

router = APIRouter(prefix="/fhir")


@router.get("/metadata", summary="CapabilityStatement: what this server really supports")
def metadata(clock: ClockDep) -> Response:
    return FhirResponse(capability_statement(to_fhir_instant(clock.now())))


@router.get(
    "/Task",
    summary="Search CAS queue Tasks: status, business-status, patient, priority, _id, _lastUpdated, _sort, _count, _offset, "
    "_summary=count; _include=Task:patient, Task:focus; _revinclude=Provenance:target",
)
def task_search(request: Request, session: SessionDep) -> Response:
    search = Search(request, "Task")
    sort = []
    for name in (search.get("_sort") or "").split(","):
        if not name:
            continue
        key = name.removeprefix("-")
        if key not in sortable_task_params():
            raise GatewayInputError(
                Problem(Kind.NOT_SUPPORTED, "_sort", f"cannot sort Tasks by {key!r}; use one of {sortable_task_params()}")
            )
        sort.append((key, name.startswith("-")))
    query = TaskQuery(
        status=split_list(search.get("status")),
        business_status=[v.split("|")[-1] for v in split_list(search.get("business-status")) or []] or None,
        priority=split_list(search.get("priority")),
        patient=search.get("patient"),
        sort=sort,
        count=search.count,
        offset=search.offset,
        ids=search.ids,
        last_updated=search.last_updated,
    )
    resources, total = search_tasks(session, query)
    return FhirResponse(search.bundle(resources, total, task_includes(session, search, resources)))


@router.get(
    "/Patient", summary="Search Patients by identifier (system|value, e.g. https://fhir.nhs.uk/Id/nhs-number|9990000018), _id, _lastUpdated"
)
def patient_search(request: Request, session: SessionDep) -> Response:
    search = Search(request, "Patient")
    token = search.get("identifier")
    if not token and search.ids is None and not search.last_updated:
        raise GatewayInputError(Problem(Kind.REQUIRED, "identifier", "Patient search needs identifier=system|value, _id or _lastUpdated"))
    ids = search.ids
    if token:
        system, _, value = token.rpartition("|")
        found = [r["id"] for r in find_by_identifier(session, "Patient", system or None, value)]
        ids = [i for i in found if ids is None or i in ids]
    query = ResourceQuery("Patient", count=search.count, offset=search.offset, ids=ids, last_updated=search.last_updated)
    resources, total = search_resources(session, query)
    return FhirResponse(search.bundle(resources, total))


@router.get("/CommunicationRequest", summary="Pending notifications (e.g. CAS-15 GP notifications): status, patient, _id, _lastUpdated")
def communication_request_search(request: Request, session: SessionDep) -> Response:
    search = Search(request, "CommunicationRequest")
    resources, total = search.resources(session, status=split_list(search.get("status")))
    return FhirResponse(search.bundle(resources, total))


@router.get("/{resource_type}/{resource_id}", summary="Read a resource by id")
def read(request: Request, resource_type: str, resource_id: str, session: SessionDep) -> Response:
    if resource_type not in READABLE_TYPES:
        raise not_served(resource_type)
    resource = get_resource(session, resource_type, valid_id(resource_id))
    if resource is None:
        raise GatewayInputError(Problem(Kind.NOT_FOUND, "id", f"{resource_type}/{resource_id} is not known"))
    return served_read(request, resource)
