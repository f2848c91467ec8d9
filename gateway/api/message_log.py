"""A small JSON read API over the console's data for ops tools: channel and destination counts, the message log and
one message (docs/quarantine.md). Scopes `messages:read` (and `messages:raw` for a raw body: each view audited);
a client bound to a service sees its own service's messages only (the read session's binding)."""

from __future__ import annotations

import base64
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from adapters.problems import GatewayInputError, Kind, Problem
from common.datetimes import parse_source_datetime, to_fhir_instant
from gateway.api.deps import ClockDep, SessionDep
from gateway.api.search import int_param, refuse_unknown
from gateway.console_data import OUTCOMES, PAGE_SIZE, channel_counts, message_detail, message_log, outbound_counts
from gateway.console_data.counts import BUSY_NOT_STORED
from gateway.platform.audit import note
from gateway.platform.security.principal import current_principal
from gateway.platform.security.scopes import ADMIN

__all__ = ["router"]

router = APIRouter(prefix="/ops")


def _instant(request: Request, name: str, default: datetime | None) -> datetime | None:
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        return parse_source_datetime(text)
    except ValueError as error:
        raise GatewayInputError(Problem(Kind.VALUE, name, f"{name} must be an instant with its offset: {error}")) from None


def _json(value: Any) -> Any:
    """A dataclass tree as JSON: instants as FHIR instants, bytes never (a raw body is sent base64 on its own)."""
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items() if not isinstance(v, bytes)}
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    return to_fhir_instant(value) if isinstance(value, datetime) else value


@router.get(
    "/channels", summary="Inbound messages per channel in [since, until) (default: the last hour): accepted, refused by reason, duplicates"
)
def channels(request: Request, session: SessionDep, clock: ClockDep) -> Response:
    refuse_unknown(request.query_params.keys(), {"since", "until"}, "channel counts")
    now = clock.now()
    until = _instant(request, "until", now) or now
    since = _instant(request, "since", until - timedelta(hours=1)) or until
    end = until if "until" in request.query_params else until + timedelta(microseconds=1)  # by default up to now, inclusive
    counts = [_json(asdict(c)) for c in channel_counts(session, since, end)]
    return JSONResponse({"since": to_fhir_instant(since), "until": to_fhir_instant(until), "busy": BUSY_NOT_STORED, "channels": counts})


@router.get("/outbound", summary="Deliveries per outbound destination: pending, sent, acknowledged, unacknowledged, dead, failed, withheld")
def outbound(session: SessionDep) -> Response:
    return JSONResponse({"destinations": [asdict(d) for d in outbound_counts(session)]})


@router.get("/messages", summary="The message log: accepted, refused (quarantine log) and re-sent messages, newest first; paged")
def messages(request: Request, session: SessionDep) -> Response:
    params = request.query_params
    refuse_unknown(params.keys(), {"channel", "outcome", "since", "page"}, "message log")
    outcome = params.get("outcome")
    if outcome is not None and outcome not in OUTCOMES:
        raise GatewayInputError(Problem(Kind.VALUE, "outcome", f"outcome must be one of {list(OUTCOMES)}"))
    page = message_log(
        session, params.get("channel"), outcome, _instant(request, "since", None), int_param(params.get("page"), "page", 1, 1, 10_000)
    )
    return JSONResponse(
        {"page": page.page, "page_size": PAGE_SIZE, "has_next": page.has_next, "entries": [_json(asdict(e)) for e in page.entries]}
    )


@router.get(
    "/messages/{key}", summary="One message: its problems or reply; ?raw=true adds its raw body (base64) with messages:raw, audited"
)
def message(key: str, request: Request, session: SessionDep, clock: ClockDep) -> Response:
    refuse_unknown(request.query_params.keys(), {"raw"}, "message")
    wants_raw = request.query_params.get("raw") == "true"
    principal = current_principal()
    if wants_raw and (principal is None or not ({ADMIN, "messages:raw"} & principal.scopes)):
        raise GatewayInputError(Problem(Kind.FORBIDDEN, "raw", "a message's raw body needs the messages:raw scope"))
    found = message_detail(session, key, raw_allowed=wants_raw, sessions=request.app.state.sessions, now=clock.now())
    if found is None:
        raise GatewayInputError(Problem(Kind.NOT_FOUND, "key", f"no message {key[:40]!r} (unknown, purged, or not this client's service)"))
    note(*({"resourceType": t, "id": i} for t, i in (ref.split("/", 1) for ref in found.entry.resources)))  # audited as shown
    body = _json(asdict(found))
    if found.raw is not None:
        body["raw_base64"] = base64.b64encode(found.raw).decode("ascii")
    return JSONResponse(body)
