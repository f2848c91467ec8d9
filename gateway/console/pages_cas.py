"""The CAS pages: the queue per service in breach order (CAS-02, colours CAS-09), and one case with its $explain and
letters. Read-only (CLEO stays the clinical tool); the same store reads and rules as GET /queue and $explain."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy.orm import Session
from starlette.responses import Response

from adapters.problems import GatewayInputError, Kind, Problem
from common import codes
from common.datetimes import format_iso_duration
from gateway.api.deps import ClockDep, RegistryDep, SessionDep
from gateway.cas.cases import explain
from gateway.cas.rules.queue import breach_status
from gateway.cas.rules.schema import RuleRegistry
from gateway.console.web import PageRoute, page
from gateway.letters.outbox import store
from gateway.platform.audit import note
from gateway.platform.security.principal import allowed_service
from gateway.platform.store.queue_index import queue_page
from gateway.platform.store.repo import get_resource

__all__ = ["router", "queue_rows"]

router = APIRouter(route_class=PageRoute)
PAGE = 25  # cases per service on one page


def _pinked(task: dict[str, Any] | None) -> bool:
    """CAS-07/08: a Clinical Navigator upgraded the case ("pinked"): the Task's `pinked` input."""
    return any(i["type"]["coding"][0]["code"] == "pinked" and i.get("valueBoolean") for i in (task or {}).get("input", []))


def queue_rows(
    session: Session, registry: RuleRegistry, service_id: str, now: datetime, count: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    """One page of a service's open cases as the queue page shows them, in CAS-02 order, and how many are open."""
    history = registry.history  # each case by the rule file version that decided it (issue 37)
    rows, total = queue_page(session, service_id, count, offset, history is not None and history.colours_differ(service_id))
    live = registry.services.get(service_id)
    out = []
    for position, row in enumerate(rows, start=offset + 1):
        task = get_resource(session, "Task", row.id)
        remaining = row.breach_at - now
        rules = history.rules_for(service_id, row.rule_set) if history is not None else live
        out.append(
            {
                "position": position,
                "id": row.id,
                "priority": row.priority,
                "classification": codes.CLASSIFICATION_DISPLAY.get(row.classification) if row.classification else None,
                "breach_at": row.breach_at,
                "colour": breach_status(row.breach_at, now, rules.breach_status) if rules else None,  # CAS-09
                "time_to_breach": format_iso_duration(remaining),
                "breached": remaining.total_seconds() <= 0,
                "pinked": _pinked(task),
            }
        )
        note({"resourceType": "Task", "id": row.id, "for": {"reference": f"Patient/{row.subject_id}"}})
    return out, total


@router.get("/console/queue", include_in_schema=False)
def queue(request: Request, session: SessionDep, clock: ClockDep, registry: RegistryDep) -> Response:
    """Every service the person may see (a bound key: its own), each service's open cases in breach order."""
    asked = request.query_params.get("service") or None
    chosen = allowed_service(asked)
    if chosen is not None and chosen not in registry.services and asked is None:  # bound to a pathway service: no queue
        return page(request, "queue.html", title="CAS queue", services=[], chosen=None, offset=0, size=PAGE, all_services=[], bound=chosen)
    if chosen is not None and chosen not in registry.services:
        raise GatewayInputError(Problem(Kind.VALUE, "service", f"unknown service {chosen[:32]!r}; known: {sorted(registry.services)}"))
    try:
        offset = max(0, int(request.query_params.get("offset") or 0)) if chosen else 0
    except ValueError:
        raise GatewayInputError(Problem(Kind.VALUE, "offset", "offset must be a whole number")) from None
    now = clock.now()
    services = []
    for service_id in [chosen] if chosen else sorted(registry.services):
        rows, total = queue_rows(session, registry, service_id, now, PAGE, offset)
        services.append({"id": service_id, "name": registry.services[service_id].service.name, "rows": rows, "total": total})
    return page(
        request,
        "queue.html",
        title="CAS queue",
        services=services,
        chosen=chosen,
        offset=offset,
        size=PAGE,
        all_services=sorted(registry.services),
        bound=None,
    )


@router.get("/console/cases/{task_id}", include_in_schema=False)
def case(task_id: str, request: Request, session: SessionDep, clock: ClockDep, registry: RegistryDep) -> Response:
    """One case: what the queue shows of it, every decision ($explain: rule ids, who, when) and its patient's letters."""
    task = get_resource(session, "Task", task_id[:64])  # a bound key: another service's case is not there (404)
    if task is None:
        raise GatewayInputError(Problem(Kind.NOT_FOUND, "id", f"Task/{task_id[:64]} is not known"))
    steps = [p["valueString"] for p in explain(session, task["id"])["parameter"] if p["name"] == "step"]
    patient = (task.get("for") or {}).get("reference", "")
    letters = store.list_rows(session, None, patient, 50, 0)[0] if patient.startswith("Patient/") else []
    note(*({"resourceType": "DocumentReference", "id": row.letter_id, "subject": {"reference": patient}} for row in letters))
    breach_at = ((task.get("restriction") or {}).get("period") or {}).get("end")
    return page(
        request,
        "case.html",
        title=f"Case {task['id'][:8]}",
        task=task,
        steps=[_step(s) for s in steps],
        letters=letters,
        breach_at=breach_at,
        pinked=_pinked(task),
        owner=(task.get("owner") or {}).get("display"),
        classification=codes.CLASSIFICATION_DISPLAY.get((task.get("businessStatus") or {}).get("coding", [{}])[0].get("code", "")),
    )


def _step(text: str) -> dict[str, str]:
    """An $explain step ("<when> <activity> (<rules>) [policy] by <who>: <why>") split for a table row."""
    when, _, rest = text.partition(" ")
    head, _, why = rest.partition(": ")
    what, _, who = head.rpartition(" by ")
    return {"when": when, "what": what or head, "who": who, "why": why}
