"""Reports: the Talking Therapies wait-list snapshot (JSON or CSV) with the clock breach list."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from adapters.problems import GatewayInputError, Kind, Problem
from gateway.api.deps import ClockDep, SessionDep
from gateway.api.search import refuse_unknown
from gateway.pathways.waitlist import reporting_period, waitlist_csv, waitlist_snapshot
from gateway.platform.security.principal import allowed_service

__all__ = ["router"]

router = APIRouter(prefix="/reports")


@router.get(
    "/waitlist",
    summary="Wait-list snapshot (TT-08/TT-09): who waits, by locality, team, step, intervention, therapist and time waiting, "
    "plus every overdue pathway clock and the TT-08 treatment targets (share entering treatment within 6 and 18 weeks); "
    "?format=csv (or Accept: text/csv) for the rows as CSV; ?service= one pathway service; ?from=&to= (YYYY-MM-DD, "
    "inclusive) the days of entering treatment the TT-08 figures count (default: all)",
)
def waitlist(request: Request, session: SessionDep, clock: ClockDep) -> Response:
    params = request.query_params
    refuse_unknown(params.keys(), {"format", "service", "from", "to"}, "waitlist report")
    service = allowed_service(params.get("service"))  # a client bound to one service sees its own wait list
    registry = request.app.state.pathway_rules
    if service is not None and service not in registry.services:
        raise GatewayInputError(Problem(Kind.VALUE, "service", f"unknown pathway service; known: {sorted(registry.services)}"))
    fmt = params.get("format") or ("csv" if "text/csv" in request.headers.get("accept", "") else "json")
    if fmt not in ("json", "csv"):
        raise GatewayInputError(Problem(Kind.VALUE, "format", "format must be json or csv"))
    snapshot = waitlist_snapshot(session, registry, clock.now(), service, *reporting_period(params.get("from"), params.get("to")))
    if fmt == "csv":
        return PlainTextResponse(waitlist_csv(snapshot), media_type="text/csv; charset=utf-8")
    return JSONResponse(snapshot)
