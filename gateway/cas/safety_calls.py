"""The safety-call worker (CAS-09): one safety-call Task per amber or red case per due interval.

Idempotent across restarts and across gateway instances sharing PostgreSQL: the safety call
for (case, interval) has a deterministic id, each is written in its own transaction, and a
copy that another instance wrote first is a primary-key conflict that is simply skipped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from common import codes
from common.datetimes import to_fhir_instant
from fhir_mapping.ids import resource_id
from gateway.cas.cases import provenance
from gateway.cas.rules.queue import breach_status, breach_time
from gateway.cas.rules.schema import RuleRegistry, ServiceRules
from gateway.platform.clock import Clock
from gateway.platform.store.db import write_transaction
from gateway.platform.store.repo import case_rule_set, get_resource, put_resource, queue_rows

__all__ = ["tick", "safety_call_for", "run_ticker"]

log = structlog.get_logger("iap.safety_calls")


def safety_call_for(case: dict[str, Any], rules: ServiceRules, now: datetime) -> dict[str, Any] | None:
    """The safety-call Task due now for `case`, or None when the case is green (CAS-09)."""
    breach = breach_time(case)
    status = breach_status(breach, now, rules.breach_status)
    if status == "green":
        return None
    since_amber = now - (breach - rules.breach_status.amber_within)
    interval = int(since_amber / rules.safety_calls.every)
    due_from = breach - rules.breach_status.amber_within + interval * rules.safety_calls.every
    return {
        "resourceType": "Task",
        "id": resource_id("Task", f"Task/{case['id']}", f"safety-call-{interval}"),
        "meta": {"profile": [f"{codes.UKCORE}Task"]},
        "basedOn": [{"reference": f"Task/{case['id']}"}],
        "partOf": [{"reference": f"Task/{case['id']}"}],
        "status": "requested",
        "intent": "order",
        "priority": case.get("priority", "urgent"),
        "code": {"coding": [{"system": codes.CAS_TASK_TYPE, "code": "safety-call", "display": "Operational safety call"}]},
        "description": f"Safety call: case is {status} (CAS-09); check for new or worsening concern (CAS-10)",
        "for": case["for"],
        "authoredOn": to_fhir_instant(now),
        "lastModified": to_fhir_instant(now),
        "executionPeriod": {"start": to_fhir_instant(due_from), "end": to_fhir_instant(due_from + rules.safety_calls.every)},
        "owner": case.get("owner"),
    }


def tick(sessions: sessionmaker[Session], registry: RuleRegistry, now: datetime) -> list[str]:
    """Create the safety calls due at `now`; returns the ids created by this call (others' are skipped). Each case by
    the rule file version that decided it (its interval and amber threshold; issue 37), when the registry has its history."""
    versions = registry.history
    if versions is not None:
        versions.refresh(now)  # a version activated since the last look becomes live here (IAP_RULES_RELOAD_SECONDS)
    with sessions() as session:
        cases = queue_rows(session, None)
    created = []
    for case in cases:
        service_id = case.pop("_service") or ""
        rules = versions.rules_for(service_id, case_rule_set(case)) if versions is not None else registry.services.get(service_id)
        call = safety_call_for(case, rules, now) if rules else None
        if call is None:
            continue
        try:
            with write_transaction(sessions) as session:
                if get_resource(session, "Task", call["id"]) is not None:
                    continue
                stored, outcome = put_resource(session, call, now, service_id)  # the case's service owns its calls
                if outcome != "created":  # another instance committed it between our look and our write
                    continue
                record = provenance(stored, "safety-call", "iap-gateway safety-call worker", ("CAS-09",), call["description"], now)
                record["target"].append({"reference": f"Task/{case['id']}"})
                put_resource(session, record, now, service_id)
            created.append(call["id"])
        except IntegrityError:
            continue  # another instance created this safety call first
    if created:
        log.info("safety_calls.created", count=len(created))
    return created


async def run_ticker(ticks: list[Callable[[datetime], object]], clock: Clock, every: timedelta) -> None:
    """The background worker started with `serve`: run each tick (CAS-09 safety calls, pathway clocks), sleep, repeat.
    Errors are logged, never fatal: the next tick retries."""
    while True:
        for run in ticks:
            try:
                await asyncio.to_thread(run, clock.now())
            except Exception as exc:  # noqa: BLE001 - the worker must outlive a bad tick; the next one retries
                log.error("ticker.tick_failed", tick=getattr(run, "__qualname__", "tick"), error=type(exc).__name__)
        await asyncio.sleep(every.total_seconds())
