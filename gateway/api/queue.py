"""The CAS queue view: open cases in breach order (CAS-02) with time to breach."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import JSONResponse, Response

from adapters.problems import GatewayInputError, Kind, Problem
from fhir_mapping.datetimes import format_iso_duration, parse_source_datetime, to_fhir_instant
from gateway.api.deps import ClockDep, RegistryDep, SessionDep
from gateway.rules.cas_queue import breach_status
from gateway.store.repo import queue_rows

__all__ = ["router"]

router = APIRouter()


@router.get("/queue", summary="CAS queue, ordered per CAS-02: breached cases first (most overdue first), then by time to breach")
def queue(session: SessionDep, clock: ClockDep, registry: RegistryDep, service: str | None = None) -> Response:
    if service is not None and service not in registry.services:
        raise GatewayInputError(Problem(Kind.VALUE, "service", f"unknown service {service[:32]!r}; known: {sorted(registry.services)}"))
    now = clock.now()
    entries = []
    for position, task in enumerate(queue_rows(session, service), start=1):
        breach = parse_source_datetime(task["restriction"]["period"]["end"])
        remaining = breach - now
        classification = ((task.get("businessStatus") or {}).get("coding") or [{}])[0]
        rules = registry.services[task["_service"]]
        entries.append(
            {
                "position": position,
                "task": f"Task/{task['id']}",
                "service": task["_service"],
                "patient": task["for"]["reference"],
                "priority": task.get("priority"),
                "classification": classification.get("display"),
                "breach_time": task["restriction"]["period"]["end"],
                "breached": remaining.total_seconds() <= 0,
                "breach_status": breach_status(breach, now, rules.breach_status),  # CAS-09
                "time_to_breach": format_iso_duration(remaining),
                "time_to_breach_seconds": int(remaining.total_seconds()),
            }
        )
    return JSONResponse({"generated_at": to_fhir_instant(now), "service": service, "count": len(entries), "entries": entries})
