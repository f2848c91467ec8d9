"""The CAS queue view: open cases in breach order (CAS-02) with time to breach."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response

from adapters.jsonparse import parse_json_object
from adapters.problems import GatewayInputError, Kind, Problem
from common import codes
from common.datetimes import format_iso_duration, to_fhir_instant
from gateway.api.deps import ClockDep, RegistryDep, SessionDep, SettingsDep
from gateway.api.examples import RISK_LEVEL_EXAMPLE
from gateway.api.ingest import body_of, read_body
from gateway.api.responses import FhirResponse
from gateway.api.search import MAX_COUNT, int_param
from gateway.cas.queue_summary import RISK_LEVELS, risk_level_observation, service_summary
from gateway.cas.rules.ops import parse_parameters
from gateway.cas.rules.queue import breach_status
from gateway.platform.audit import note
from gateway.platform.security.principal import allowed_service, require_service
from gateway.platform.store.db import write_transaction
from gateway.platform.store.queue_index import queue_page
from gateway.platform.store.repo import put_resource

__all__ = ["router"]

router = APIRouter()

QUEUE_PAGE = 50  # /queue's _count when none is given; at most MAX_COUNT (README "CAS queue")


@router.get(
    "/queue",
    summary="CAS queue, ordered per CAS-02: breached cases first (most overdue first), then by time to breach;"
    f" paged: _count (default {QUEUE_PAGE}, at most {MAX_COUNT}) and _offset, with a `next` link",
)
def queue(
    request: Request,
    session: SessionDep,
    clock: ClockDep,
    registry: RegistryDep,
    service: str | None = None,
    count: Annotated[str | None, Query(alias="_count")] = None,
    offset: Annotated[str | None, Query(alias="_offset")] = None,
) -> Response:
    """One page of the queue from the cases' indexed columns (gateway.platform.store.queue_index): no case is read whole."""
    service = allowed_service(service)
    if service is not None and service not in registry.services:
        raise GatewayInputError(Problem(Kind.VALUE, "service", f"unknown service {service[:32]!r}; known: {sorted(registry.services)}"))
    size, start = int_param(count, "_count", QUEUE_PAGE, 0, MAX_COUNT), int_param(offset, "_offset", 0, 0, 10_000_000)
    now = clock.now()
    history = registry.history  # each case by the rule file version that decided it (issue 37)
    rows, total = queue_page(session, service, size, start, history is not None and history.colours_differ(service))
    rules_for = history.rules_for if history is not None else lambda s, _: registry.services.get(s or "")
    note(*({"resourceType": "Task", "id": row.id, "for": {"reference": f"Patient/{row.subject_id}"}} for row in rows))
    entries = []
    for position, row in enumerate(rows, start=start + 1):
        remaining = row.breach_at - now
        rules = rules_for(row.service_id, row.rule_set)  # the version that decided the case (issue 37)
        entries.append(
            {
                "position": position,
                "task": f"Task/{row.id}",
                "service": row.service_id,
                "patient": f"Patient/{row.subject_id}" if row.subject_id else None,
                "priority": row.priority,
                "classification": codes.CLASSIFICATION_DISPLAY.get(row.classification) if row.classification else None,
                "breach_time": to_fhir_instant(row.breach_at),
                "breached": remaining.total_seconds() <= 0,
                "breach_status": breach_status(row.breach_at, now, rules.breach_status) if rules else None,  # CAS-09
                "time_to_breach": format_iso_duration(remaining),
                "time_to_breach_seconds": int(remaining.total_seconds()),
            }
        )
    links = {"self": str(request.url)}
    if start + len(rows) < total and size:
        kept = [(k, v) for k, v in request.query_params.multi_items() if k not in ("_count", "_offset")]
        links["next"] = str(request.url.replace(query=urlencode([*kept, ("_count", str(size)), ("_offset", str(start + size))])))
    body = {"generated_at": to_fhir_instant(now), "service": service, "total": total, "offset": start, "count": len(entries)}
    return JSONResponse(body | {"link": links, "entries": entries})


@router.get("/queue/summary", summary="CAS-16: counts by breach status and classification, evidence, suggested risk level, confirmed level")
def summary(session: SessionDep, clock: ClockDep, registry: RegistryDep, service: str) -> Response:
    rules = registry.services.get(allowed_service(service) or service)
    if rules is None:
        raise GatewayInputError(Problem(Kind.VALUE, "service", f"unknown service {service[:32]!r}; known: {sorted(registry.services)}"))
    return JSONResponse(service_summary(session, rules, clock.now(), registry.history))


@router.post(
    "/queue/$confirm-risk-level",
    summary="CAS-16: a Clinical Navigator confirms the queue risk level (kept with the suggestion)",
    description="Scope `cas:operate`. Stores the confirmed level (low, medium, high) as an Observation beside the "
    "suggestion it was made against; /queue/summary shows it. 201 with the Observation.",
    openapi_extra=body_of(
        "application/fhir+json",
        "FHIR Parameters: service, level, practitioner, note",
        examples={"confirm": ("CAS-16: confirm high", RISK_LEVEL_EXAMPLE)},
    ),
)
async def confirm_risk_level(request: Request, clock: ClockDep, registry: RegistryDep, settings: SettingsDep) -> Response:
    params = parse_parameters(parse_json_object(await read_body(request, settings.max_body_bytes), "Parameters"))
    service = params.code("service", tuple(registry.services), required=True)
    require_service(service)
    level = params.code("level", RISK_LEVELS, required=True)
    who = params.string("practitioner", required=True)
    note = params.string("note")
    assert service is not None and level is not None and who is not None
    now = clock.now()

    def store() -> dict[str, Any]:
        with write_transaction(request.app.state.sessions) as session:
            suggested = service_summary(session, registry.services[service], now, registry.history)["suggested_risk_level"]
            # kept under its service: the summary reads the service's latest one alone (gateway.platform.store.queue_index)
            stored, _ = put_resource(session, risk_level_observation(service, suggested, level, who, note, now), now, service)
            return stored

    return FhirResponse(await run_in_threadpool(store), status_code=201)
