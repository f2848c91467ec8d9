"""The audit trail over FHIR: GET /fhir/AuditEvent (search) and /fhir/AuditEvent/{id} (read); scope audit:read."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from adapters.problems import GatewayInputError, Kind, Problem
from gateway.api.deps import SessionDep
from gateway.api.responses import FhirResponse
from gateway.api.search import date_filter, paging, refuse_unknown, searchset, split_list
from gateway.store.audit_store import AuditQuery, get_audit_event, search_audit_events

__all__ = ["router", "AUDIT_PARAMS"]

router = APIRouter(prefix="/fhir/AuditEvent")

AUDIT_PARAMS = {
    "date": "date",
    "agent": "token",
    "entity": "reference",
    "patient": "reference",
    "outcome": "token",
    "action": "token",
    "subtype": "token",
}


@router.get(
    "",
    summary="Search the audit trail: date (ge/le/gt/lt/eq), agent (client id), entity (Type/id), patient, outcome, action, subtype; "
    "_sort=-date for newest first",
)
def audit_search(request: Request, session: SessionDep) -> Response:
    params = request.query_params
    refuse_unknown(params.keys(), {*AUDIT_PARAMS, "_sort", "_count", "_offset", "_format"}, "AuditEvent")
    count, offset = paging(params)
    sort = params.get("_sort") or "date"
    if sort not in ("date", "-date"):
        raise GatewayInputError(Problem(Kind.NOT_SUPPORTED, "_sort", "AuditEvents sort by date or -date only"))
    entities = list(params.getlist("entity"))
    if params.get("patient"):
        entities.append("Patient/" + params["patient"].removeprefix("Patient/"))
    query = AuditQuery(
        agent=(params.get("agent") or "").rpartition("|")[2] or None,
        entities=entities,
        outcome=split_list(params.get("outcome")),
        action=split_list(params.get("action")),
        subtype=[v.rpartition("|")[2] for v in split_list(params.get("subtype")) or []] or None,
        dates=[date_filter(value) for value in params.getlist("date")],
        newest_first=sort == "-date",
        count=count,
        offset=offset,
    )
    resources, total = search_audit_events(session, query)
    return FhirResponse(searchset(request, resources, total, count, offset, audited=False))


@router.get("/{event_id}", summary="Read one AuditEvent")
def audit_read(event_id: str, session: SessionDep) -> Response:
    resource = get_audit_event(session, event_id[:64])
    if resource is None:
        raise GatewayInputError(Problem(Kind.NOT_FOUND, "id", f"AuditEvent/{event_id[:64]} is not known"))
    return FhirResponse(resource)
