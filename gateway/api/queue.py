"""The CAS queue view: open cases in breach order (CAS-02) with time to breach."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response

from adapters.jsonparse import parse_json_object
from adapters.problems import GatewayInputError, Kind, Problem
from fhir_mapping.datetimes import format_iso_duration, parse_source_datetime, to_fhir_instant
from gateway.api.deps import ClockDep, RegistryDep, SessionDep, SettingsDep
from gateway.api.ingest import body_of, read_body
from gateway.api.responses import FhirResponse
from gateway.audit import note
from gateway.queue_summary import RISK_LEVELS, RISK_SYSTEM, queue_summary, risk_level_observation
from gateway.rules.cas_ops import parse_parameters
from gateway.rules.cas_queue import breach_status
from gateway.rules.schema import ServiceRules
from gateway.security.principal import allowed_service, require_service
from gateway.store.db import write_transaction
from gateway.store.repo import ResourceQuery, get_resource, put_resource, queue_rows, search_resources

__all__ = ["router"]

router = APIRouter()


@router.get("/queue", summary="CAS queue, ordered per CAS-02: breached cases first (most overdue first), then by time to breach")
def queue(session: SessionDep, clock: ClockDep, registry: RegistryDep, service: str | None = None) -> Response:
    service = allowed_service(service)
    if service is not None and service not in registry.services:
        raise GatewayInputError(Problem(Kind.VALUE, "service", f"unknown service {service[:32]!r}; known: {sorted(registry.services)}"))
    now = clock.now()
    entries = []
    rows = queue_rows(session, service)
    note(*rows)
    for position, task in enumerate(rows, start=1):
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


@router.get("/queue/summary", summary="CAS-16: counts by breach status and classification, evidence, suggested risk level, confirmed level")
def summary(session: SessionDep, clock: ClockDep, registry: RegistryDep, service: str) -> Response:
    rules = registry.services.get(allowed_service(service) or service)
    if rules is None:
        raise GatewayInputError(Problem(Kind.VALUE, "service", f"unknown service {service[:32]!r}; known: {sorted(registry.services)}"))
    return JSONResponse(_summary(session, rules, clock.now()))


@router.post(
    "/queue/$confirm-risk-level",
    summary="CAS-16: a Clinical Navigator confirms the queue risk level (kept with the suggestion)",
    openapi_extra=body_of("application/fhir+json", "FHIR Parameters: service, level, practitioner, note"),
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
            suggested = _summary(session, registry.services[service], now)["suggested_risk_level"]
            stored, _ = put_resource(session, risk_level_observation(service, suggested, level, who, note, now), now)
            return stored

    return FhirResponse(await run_in_threadpool(store), status_code=201)


def _summary(session: Session, rules: ServiceRules, now: datetime) -> dict[str, Any]:
    cases = queue_rows(session, rules.service.id)
    patients = {ref: get_resource(session, "Patient", ref.split("/", 1)[1]) or {} for ref in {c["for"]["reference"] for c in cases}}
    since = now - rules.queue_risk.worsening_within
    records, _ = search_resources(session, ResourceQuery("Provenance", dates=[("ge", since)], count=10_000))
    case_refs = {f"Task/{c['id']}" for c in cases}
    worsening = sum(
        1
        for r in records
        if any(c.get("code") == "CAS-10" for c in r["reason"][0].get("coding", []))
        and any(t["reference"].split("/_history/")[0] in case_refs for t in r["target"])
    )
    confirmations, _ = search_resources(
        session, ResourceQuery("Observation", tokens=[("code", RISK_SYSTEM, "queue-risk-level")], count=10_000)
    )
    mine = [o for o in confirmations if o.get("focus", [{}])[0].get("identifier", {}).get("value") == rules.service.id]
    latest = mine[-1] if mine else None
    confirmed = (
        {
            "level": latest["valueCodeableConcept"]["coding"][0]["code"],
            "suggested_then": latest["component"][0]["valueCodeableConcept"]["coding"][0]["code"],
            "by": latest["performer"][0]["display"],
            "at": latest["effectiveDateTime"],
            "observation": f"Observation/{latest['id']}",
        }
        if latest
        else None
    )
    return queue_summary(rules, cases, patients, worsening, confirmed, now)
