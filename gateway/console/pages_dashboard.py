"""The dashboard: per inbound channel what came in (accepted, refused by reason, duplicates, turned away busy), per
outbound destination what is waiting, sent and stuck, per CAS service the queue by breach colour and the safety calls
due (CAS-09), per Talking Therapies service the wait list against its lines (TT-09). Each section is shown to whom
the scope table lets see the page behind it; each number links to its list. Refreshes itself (console.js)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy.orm import Session
from starlette.responses import Response

from gateway.api.deps import ClockDep, RegistryDep, SessionDep
from gateway.console.web import PageRoute, login_of, may_see, page
from gateway.outbox import store
from gateway.rules.schema import RuleRegistry
from gateway.security.principal import allowed_service
from gateway.store.queue_index import queue_counts
from gateway.waitlist import waitlist_snapshot

__all__ = ["router"]

router = APIRouter(route_class=PageRoute)
WINDOWS = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
REFRESH_SECONDS = 30


@router.get("/console/", include_in_schema=False)
def dashboard(request: Request, session: SessionDep, clock: ClockDep, registry: RegistryDep) -> Response:
    login = login_of(request)
    assert login is not None  # the gate let no one here unsigned
    who, now = login.principal, clock.now()
    window = request.query_params.get("window") if request.query_params.get("window") in WINDOWS else "day"
    sections: dict[str, Any] = {}
    if may_see(who, "/console/letters"):
        sections["outbound"] = store.summary(session)[0]
    if may_see(who, "/console/queue"):
        sections["cas"] = _cas(session, registry, now)
    if may_see(who, "/console/waitlist"):
        sections["waitlist"] = _waitlist(request, session, now)
    return page(request, "dashboard.html", title="Dashboard", window=window, windows=list(WINDOWS), refresh=REFRESH_SECONDS, **sections)


def _cas(session: Session, registry: RuleRegistry, now: datetime) -> list[dict[str, Any]]:
    """Per CAS service the person may see: open cases by breach colour, and the safety calls due (every case not
    green has one due, CAS-09)."""
    bound = allowed_service(None)
    out = []
    for service_id in [bound] if bound else sorted(registry.services):
        rules = registry.services[service_id]
        ages = rules.queue_risk.extreme_age
        counts = queue_counts(
            session,
            service_id,
            now,
            rules.breach_status.amber_within,
            rules.breach_status.black_after,
            ages.get("under", 0),
            ages.get("over", 200),
        )  # the counts GET /queue/summary reads (gateway.store.queue_index), the service's own CAS-09 thresholds
        colours = {colour: counts.by_breach_status[colour] for colour in ("green", "amber", "red", "black")}
        out.append(
            {
                "id": service_id,
                "name": rules.service.name,
                "colours": colours,
                "open": counts.open_cases,
                "safety_calls_due": colours["amber"] + colours["red"] + colours["black"],
            }
        )
    return out


def _waitlist(request: Request, session: Session, now: datetime) -> list[dict[str, Any]]:
    """Per pathway service: how many wait for a first and a second appointment, and how many are over each line."""
    registry = request.app.state.pathway_rules
    bound = allowed_service(None)
    out = []
    for service_id in [bound] if bound in registry.services else [] if bound else sorted(registry.services):
        summary = waitlist_snapshot(session, registry, now, service_id)["summary"]
        out.append({"id": service_id, "first": summary["first-appointment"], "second": summary["second-appointment"]})
    return out
