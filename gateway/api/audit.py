"""The audit trail over FHIR: GET /fhir/AuditEvent (search) and /fhir/AuditEvent/{id} (read); scope audit:read."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from adapters.problems import GatewayInputError, Kind, Problem
from gateway.api.deps import SessionDep
from gateway.api.responses import FhirResponse
from gateway.api.search import Search, date_filter, split_list
from gateway.platform.store.audit_store import AuditQuery, get_audit_event, search_audit_events

__all__ = ["router"]

router = APIRouter(prefix="/fhir/AuditEvent")


@router.get(
    "",
    summary="Search the audit trail: date (ge/le/gt/lt/eq), agent (client id), entity (Type/id), patient, outcome, action, subtype; "
    "_sort=-date for newest first",
)
def audit_search(request: Request, session: SessionDep) -> Response:
    search = Search(request, "AuditEvent")
    sort = search.get("_sort") or "date"
    if sort not in ("date", "-date"):
        raise GatewayInputError(Problem(Kind.NOT_SUPPORTED, "_sort", "AuditEvents sort by date or -date only"))
    entities = list(search.getlist("entity"))
    if search.get("patient"):
        entities.append("Patient/" + (search.get("patient") or "").removeprefix("Patient/"))
    query = AuditQuery(
        agent=(search.get("agent") or "").rpartition("|")[2] or None,
        entities=entities,
        outcome=split_list(search.get("outcome")),
        action=split_list(search.get("action")),
        subtype=[v.rpartition("|")[2] for v in split_list(search.get("subtype")) or []] or None,
        # an AuditEvent is written once and never changed: it was last updated when it was recorded
        dates=[date_filter(value) for value in search.getlist("date")] + search.last_updated,
        newest_first=sort == "-date",
        count=search.count,
        offset=search.offset,
        ids=search.ids,
    )
    resources, total = search_audit_events(session, query)
    return FhirResponse(search.bundle(resources, total, audited=False))


@router.get("/{event_id}", summary="Read one AuditEvent")
def audit_read(event_id: str, session: SessionDep) -> Response:
    resource = get_audit_event(session, event_id[:64])
    if resource is None:
        raise GatewayInputError(Problem(Kind.NOT_FOUND, "id", f"AuditEvent/{event_id[:64]} is not known"))
    return FhirResponse(resource)
