"""The wait-list page (the /reports/waitlist figures, TT-08/TT-09, charts as inline SVG) and the audit search page
(by client, patient, date and outcome, through the same store query as GET /fhir/AuditEvent)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from sqlalchemy import or_, select
from starlette.responses import Response

from adapters.problems import GatewayInputError, Kind, Problem
from gateway.api.deps import ClockDep, SessionDep
from gateway.api.search import day_filter
from gateway.console.svg import count_bars, wait_histogram
from gateway.console.web import PageRoute, page
from gateway.pathways.waitlist import waitlist_snapshot
from gateway.platform.security.principal import allowed_service
from gateway.platform.store.audit_store import AuditQuery, search_audit_events
from gateway.platform.store.models import ApiClient

__all__ = ["router"]

router = APIRouter(route_class=PageRoute)
OUTCOMES = {"0": "success", "4": "refused (minor failure)", "8": "error (serious failure)", "12": "major failure"}
AUDIT_PAGE = 50


@router.get("/console/waitlist", include_in_schema=False)
def waitlist(request: Request, session: SessionDep, clock: ClockDep) -> Response:
    """The wait list by service and team: who waits how long against the 28/42 and 28/90 day lines, and TT-08's targets."""
    registry = request.app.state.pathway_rules
    asked = request.query_params.get("service") or None
    service = allowed_service(asked)  # a bound key: its own service only
    if service is not None and service not in registry.services and asked is None:  # bound to a CAS service: no wait list
        return page(request, "waitlist.html", title="Wait list", bound=service)
    if service is not None and service not in registry.services:
        raise GatewayInputError(Problem(Kind.VALUE, "service", f"unknown pathway service; known: {sorted(registry.services)}"))
    snapshot = waitlist_snapshot(session, registry, clock.now(), service)
    charts = []
    for waiting_for, line in sorted(snapshot["lines"].items()):
        days = [r["days_waiting"] for r in snapshot["rows"] if r["waiting_for"] == waiting_for]
        labelled = {("target" if k == "target_days" else k.removesuffix("_days").replace("_", " ")): v for k, v in line.items()}
        title = f"Waiting for a {waiting_for.replace('-', ' ')}: how many have waited how many days (weeks as bars)"
        charts.append((title, wait_histogram(f"chart-{waiting_for}", title, days, labelled)))
    by_team = snapshot["summary"]["by_team"]
    charts.append(("Waiting, by team", count_bars("chart-team", "Waiting, by team", by_team)))
    return page(
        request,
        "waitlist.html",
        title="Wait list",
        snapshot=snapshot,
        charts=charts,
        service=service,
        services=sorted(registry.services),
        summary=snapshot["summary"],
        bound=None,
    )


@router.get("/console/audit", include_in_schema=False)
def audit(request: Request, session: SessionDep) -> Response:
    """Search the audit trail: client (id or name), patient (Patient id, as FHIR search takes it), days, outcome."""
    params = request.query_params
    client = (params.get("client") or "").strip()[:64]
    patient = (params.get("patient") or "").strip().removeprefix("Patient/")[:64]
    outcome = params.get("outcome") or None
    if outcome is not None and outcome not in OUTCOMES:
        raise GatewayInputError(Problem(Kind.VALUE, "outcome", f"outcome is one of {sorted(OUTCOMES)}"))
    dates = []
    if params.get("from"):
        dates += day_filter("ge" + params["from"], "from")
    if params.get("to"):
        dates += day_filter("le" + params["to"], "to")
    try:
        offset = max(0, int(params.get("offset") or 0))
    except ValueError:
        raise GatewayInputError(Problem(Kind.VALUE, "offset", "offset must be a whole number")) from None
    agent = _client_id(request, client) if client else None
    query = AuditQuery(
        agent=agent,
        entities=[f"Patient/{patient}"] if patient else None,
        outcome=[outcome] if outcome else None,
        dates=dates,
        newest_first=True,
        count=AUDIT_PAGE,
        offset=offset,
    )
    events, total = search_audit_events(session, query) if not client or agent else ([], 0)
    kept = urlencode([(k, v) for k, v in params.multi_items() if k != "offset" and v])
    return page(
        request,
        "audit.html",
        title="Audit",
        events=[_row(e) for e in events],
        total=total,
        offset=offset,
        size=AUDIT_PAGE,
        form={"client": client, "patient": patient, "outcome": outcome or "", "from": params.get("from", ""), "to": params.get("to", "")},
        outcomes=OUTCOMES,
        kept=kept,
    )


def _client_id(request: Request, client: str) -> str | None:
    """A client's id from its id or its name (the security gate's own table, read apart from the bound read session)."""
    with request.app.state.sessions() as clients:
        return clients.execute(select(ApiClient.id).where(or_(ApiClient.id == client, ApiClient.name == client))).scalar_one_or_none()


def _row(event: dict[str, Any]) -> dict[str, Any]:
    entities = [e for e in event.get("entity", []) if "what" in e]
    request = next((e.get("description", "") for e in event.get("entity", []) if "description" in e), "")
    who = event["agent"][0].get("who", {})
    return {
        "recorded": event["recorded"],
        "who": who.get("display", ""),
        "outcome": event["outcome"],
        "outcome_desc": event.get("outcomeDesc", ""),
        "request": request,
        "entities": [e["what"]["reference"] for e in entities][:6],
        "more": max(0, len(entities) - 6),
    }
