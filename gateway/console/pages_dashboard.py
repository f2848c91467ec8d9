"""The dashboard: per inbound channel what came in (accepted, refused by reason, duplicates), per outbound destination
what is waiting, sent, acknowledged and stuck, per CAS service the queue by breach colour and the safety calls due
(CAS-09), per Talking Therapies service the wait list against its lines (TT-08, TT-09). The numbers are
gateway.console_data's; each section is shown to whom the scope table lets see the page behind it, and each number
links to its list. Refreshes itself (static/console.js); without JavaScript, a reload does."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.api.deps import ClockDep, RegistryDep, SessionDep
from gateway.console.pages_messages import CHANNEL_NAMES, WINDOWS
from gateway.console.web import PageRoute, login_of, may_see, page
from gateway.console_data import BUSY_NOT_STORED, channel_counts, outbound_counts, queue_colours, waitlist_summary

__all__ = ["router"]

router = APIRouter(route_class=PageRoute)
REFRESH_SECONDS = 30
_SHOWN = ("hour", "day")


@router.get("/console/", include_in_schema=False)
def dashboard(request: Request, session: SessionDep, clock: ClockDep, registry: RegistryDep) -> Response:
    login = login_of(request)
    assert login is not None  # the gate lets no one here who is not signed in
    who, now = login.principal, clock.now()
    asked = request.query_params.get("window") or "day"
    window = asked if asked in _SHOWN else "day"
    sections: dict[str, Any] = {}
    if may_see(who, "/console/messages"):
        # [since, until): a message received this very second counts too
        sections["inbound"] = channel_counts(session, now - WINDOWS[window], now + timedelta(seconds=1))
    if may_see(who, "/console/letters"):
        sections["outbound"] = outbound_counts(session)
    if may_see(who, "/console/queue"):
        names = {sid: rules.service.name for sid, rules in registry.services.items()}
        sections["cas"] = [(names.get(q.service, q.service), q) for q in queue_colours(session, registry, now)]
    if may_see(who, "/console/waitlist"):
        sections["waitlist"] = waitlist_summary(session, request.app.state.pathway_rules, now)
    return page(
        request, "dashboard.html", title="Dashboard", window=window, windows=_SHOWN, refresh=REFRESH_SECONDS,
        channels=CHANNEL_NAMES, busy_note=BUSY_NOT_STORED, **sections,
    )  # fmt: skip
