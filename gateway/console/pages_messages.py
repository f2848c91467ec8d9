"""The message log (every inbound message: accepted, refused, re-sent), one message with what it created or changed,
its raw body (scope `messages:raw`, each view audited), and the quarantine log (the refused ones, with their problems).
The reads are gateway.console_data's, on the person's read session (bound to their service when their key is)."""

from __future__ import annotations

from datetime import datetime, timedelta

from fastapi import APIRouter, Request
from starlette.responses import Response

from adapters.problems import GatewayInputError, Kind, Problem
from gateway.api.deps import ClockDep, SessionDep
from gateway.console.web import PageRoute, page
from gateway.console_data import OUTCOMES, MessageDetail, message_detail, message_log

__all__ = ["router", "CHANNEL_NAMES", "WINDOWS"]

router = APIRouter(route_class=PageRoute)
CHANNEL_NAMES = {
    "nhs111-case": "NHS 111 case",
    "bars": "BaRS",
    "mhpl": "MHPL",
    "hl7v2": "HL7 v2",
    "cleo": "CLEO",
    "pcmis": "PCMIS",
    "systmone": "SystmOne",
    "questionnaire-response": "Measures",
    "pathway-referral": "Pathway referrals",
}
WINDOWS = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(days=7)}


def _filters(request: Request, now: datetime) -> tuple[str | None, datetime | None, str, int]:
    """channel, since, the window's name ("all" for none) and the page, from the query: a wrong one is a 400 page."""
    params = request.query_params
    channel = params.get("channel") or None
    if channel is not None and channel not in CHANNEL_NAMES:
        raise GatewayInputError(Problem(Kind.VALUE, "channel", f"unknown channel; one of {sorted(CHANNEL_NAMES)}"))
    window = params.get("since") or "all"
    if window != "all" and window not in WINDOWS:
        raise GatewayInputError(Problem(Kind.VALUE, "since", f"since is one of {[*WINDOWS, 'all']}"))
    number = params.get("page") or "1"
    if not number.isdigit() or not 1 <= int(number) <= 10_000:
        raise GatewayInputError(Problem(Kind.VALUE, "page", "page is a whole number from 1"))
    return channel, (now - WINDOWS[window] if window in WINDOWS else None), window, int(number)


@router.get("/console/messages", include_in_schema=False)
def messages(request: Request, session: SessionDep, clock: ClockDep) -> Response:
    channel, since, window, number = _filters(request, clock.now())
    outcome = request.query_params.get("outcome") or None
    if outcome is not None and outcome not in OUTCOMES:
        raise GatewayInputError(Problem(Kind.VALUE, "outcome", f"outcome is one of {list(OUTCOMES)}"))
    found = message_log(session, channel, outcome, since, number)
    return page(
        request, "messages.html", title="Messages", found=found, channel=channel, outcome=outcome, window=window,
        channels=CHANNEL_NAMES, outcomes=OUTCOMES, windows=[*WINDOWS, "all"], quarantine=False,
    )  # fmt: skip


@router.get("/console/quarantine", include_in_schema=False)
def quarantine(request: Request, session: SessionDep, clock: ClockDep) -> Response:
    """The refused messages still kept (IAP_QUARANTINE_RETENTION_DAYS), newest first, each with why it was refused."""
    channel, since, window, number = _filters(request, clock.now())
    found = message_log(session, channel, "refused", since, number)
    retention = request.app.state.settings.quarantine_retention_days
    return page(
        request, "messages.html", title="Quarantine", found=found, channel=channel, outcome="refused", window=window,
        channels=CHANNEL_NAMES, outcomes=OUTCOMES, windows=[*WINDOWS, "all"], quarantine=True, retention=retention,
    )  # fmt: skip


def _detail(request: Request, session: SessionDep, key: str, raw: bool, now: datetime) -> MessageDetail:
    found = message_detail(session, key[:40], raw_allowed=raw, sessions=request.app.state.sessions, now=now)
    if found is None:  # unknown, purged, or another service's: the same answer for each
        raise GatewayInputError(Problem(Kind.NOT_FOUND, "message", f"no message {key[:40]!r} (a refused one is kept for a while only)"))
    return found


@router.get("/console/messages/{key}", include_in_schema=False)
def message(key: str, request: Request, session: SessionDep, clock: ClockDep) -> Response:
    """One message: where from, when, what came of it, the problems of a refused one, the resources it created or changed."""
    found = _detail(request, session, key, False, clock.now())
    return page(request, "message.html", title=f"Message {found.entry.key}", found=found, channels=CHANNEL_NAMES, raw_text=None)


@router.get("/console/messages/{key}/raw", include_in_schema=False)
def message_raw(key: str, request: Request, session: SessionDep, clock: ClockDep) -> Response:
    """The raw body as received (scope `messages:raw`): it may hold patient details, so the view is audited."""
    found = _detail(request, session, key, True, clock.now())
    text = found.raw.decode("utf-8", "replace") if found.raw is not None else None
    return page(request, "message.html", title=f"Message {found.entry.key}", found=found, channels=CHANNEL_NAMES, raw_text=text)
