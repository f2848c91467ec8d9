"""The dashboard's queues: each CAS service's open cases by breach colour (CAS-09) with its safety calls due, and each
Talking Therapies service's wait list against its targets (TT-08, TT-09).

Both reuse the API's own reads: `gateway.cas.queue_summary.service_summary` (what /queue/summary answers) and
`gateway.pathways.waitlist.waitlist_snapshot` (what /reports/waitlist answers). The queue counts are read from the queue's
indexes, which a read session's service binding does not filter, so a bound session is given its own service alone
here, as /queue/summary does with `allowed_service`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from common import codes
from common.datetimes import parse_source_datetime
from gateway.cas.queue_summary import service_summary
from gateway.cas.rules.schema import RuleRegistry
from gateway.pathways.rules.schema import PathwayRegistry, TalkingTherapiesRules
from gateway.pathways.waitlist import waitlist_snapshot
from gateway.platform.store.models import ResourceRow
from gateway.platform.store.repo import ACTIVE_TASK_STATUSES
from gateway.platform.store.visibility import bound_service

__all__ = ["ServiceQueue", "WaitLine", "TreatmentTarget", "WaitlistService", "queue_colours", "waitlist_summary"]


@dataclass(frozen=True)
class ServiceQueue:
    """One CAS service's queue now: open cases by CAS-09 colour (black: long breached, counted apart from red),
    safety calls open and due (`safety_calls_overdue`: past their window), and the CAS-16 suggested level."""

    service: str
    open_cases: int
    green: int
    amber: int
    red: int
    black: int
    safety_calls_due: int
    safety_calls_overdue: int
    suggested_risk_level: str
    confirmed_risk_level: str | None


@dataclass(frozen=True)
class WaitLine:
    """Who waits for one appointment (first: TT-08; second: TT-09) against the service's lines, in days."""

    waiting_for: str  # first-appointment | second-appointment
    waiting: int
    over_target: int
    over_outer_line: int
    longest_days: int
    target_days: int | None
    outer_line_days: int | None  # the national 42 days (first), the 90-day tail (second)


@dataclass(frozen=True)
class TreatmentTarget:
    """TT-08: of those who entered treatment, the share within `within_days` of referral, against `target_share`."""

    within_days: int
    target_share: float
    share: float | None  # None: nobody entered treatment yet
    met: bool | None


@dataclass(frozen=True)
class WaitlistService:
    service: str
    waiting: int
    lines: tuple[WaitLine, ...]
    overdue_clocks: int  # running pathway clocks past their due time (TT and PC clocks alike)
    entered_treatment: int
    treatment_targets: tuple[TreatmentTarget, ...]


def queue_colours(session: Session, registry: RuleRegistry, now: datetime) -> list[ServiceQueue]:
    """Each CAS service's queue by breach colour and its safety calls due (a bound session: its own service only)."""
    bound = bound_service(session)
    out = []
    for service_id, rules in sorted(registry.services.items()):
        if bound is not None and service_id != bound:
            continue
        summary = service_summary(session, rules, now, registry.history)  # each case its own version's colours (CAS-09)
        colours = summary["by_breach_status"]
        due, overdue = _safety_calls(session, service_id, now)
        confirmed = summary["confirmed_risk_level"]
        out.append(
            ServiceQueue(
                service=service_id,
                open_cases=summary["evidence"]["open_cases"],
                green=colours["green"],
                amber=colours["amber"],
                red=colours["red"],
                black=colours["black"],
                safety_calls_due=due,
                safety_calls_overdue=overdue,
                suggested_risk_level=summary["suggested_risk_level"]["level"],
                confirmed_risk_level=confirmed["level"] if confirmed else None,
            )
        )
    return out


def _safety_calls(session: Session, service_id: str, now: datetime) -> tuple[int, int]:
    """The service's open safety-call Tasks (CAS-09) whose window has begun, and those whose window has ended.
    Safety calls carry no breach time, so they are the service's open Tasks off the queue index, read and checked
    for their code (few: one per amber or red case per interval, until the call is made)."""
    stmt = select(ResourceRow.content).where(
        ResourceRow.resource_type == "Task",
        ResourceRow.service_id == service_id,
        ResourceRow.breach_at.is_(None),
        ResourceRow.status.in_(ACTIVE_TASK_STATUSES),
    )
    due = overdue = 0
    for content in session.execute(stmt).scalars():
        task: dict[str, Any] = json.loads(content)
        if not any(c.get("system") == codes.CAS_TASK_TYPE and c.get("code") == "safety-call" for c in task["code"]["coding"]):
            continue
        window = task.get("executionPeriod") or {}
        if "start" in window and parse_source_datetime(window["start"]) <= now:
            due += 1
            overdue += "end" in window and parse_source_datetime(window["end"]) <= now
    return due, overdue


def waitlist_summary(session: Session, registry: PathwayRegistry, now: datetime) -> list[WaitlistService]:
    """Each Talking Therapies service's wait list against its targets (a bound session: its own service only)."""
    bound = bound_service(session)
    out = []
    for service_id, rules in sorted(registry.services.items()):
        if not isinstance(rules, TalkingTherapiesRules) or (bound is not None and service_id != bound):
            continue
        snapshot = waitlist_snapshot(session, registry, now, service_id)
        summary = snapshot["summary"]
        lines = []
        for waiting_for in ("first-appointment", "second-appointment"):
            figures, line = summary[waiting_for], snapshot["lines"].get(waiting_for, {})
            outer = next((v for k, v in line.items() if k != "target_days"), None)
            lines.append(
                WaitLine(
                    waiting_for,
                    figures["waiting"],
                    figures["over_target"],
                    figures["over_outer_line"],
                    figures["longest_days"],
                    line.get("target_days", _target_days(rules, waiting_for)),
                    outer,
                )
            )
        none: dict[str, Any] = {"entered_treatment": 0, "targets": []}
        targets: dict[str, Any] = snapshot["treatment_targets"][0] if snapshot["treatment_targets"] else none
        out.append(
            WaitlistService(
                service=service_id,
                waiting=summary["waiting"],
                lines=tuple(lines),
                overdue_clocks=len(snapshot["breaches"]),
                entered_treatment=targets["entered_treatment"],
                treatment_targets=tuple(
                    TreatmentTarget(t["within_days"], t["target_share"], t["share"], t["met"]) for t in targets["targets"]
                ),
            )
        )
    return out


def _target_days(rules: TalkingTherapiesRules, waiting_for: str) -> int | None:
    """The line from the rule file when nobody waits (the snapshot gives lines only for those waiting)."""
    name = {"first-appointment": "tt-initial-assessment", "second-appointment": "tt-second-session"}[waiting_for]
    rule = rules.clocks.get(name)
    return rule.after.days if rule is not None and rule.after else None
