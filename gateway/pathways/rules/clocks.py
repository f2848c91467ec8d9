"""Waiting-time clocks on an episode of care: start, stop, due, and the PC-08 stop test.

A clock is data on the EpisodeOfCare (fhir_mapping.episodes CLOCK_URL): name, rule, start, due,
and once stopped, when and why. Windows come from the rule file (`clocks:`): a duration, England
working days (bank holidays skipped) or calendar months, all in Europe/London.

  PC-06/PC-08 pcmhh-4-week-wait   stops only when a meaningful assessment, a baseline outcome measure
                                  (GBO, DIALOG or ReQoL) and a first intervention or co-produced care
                                  plan (DIALOG+ in force, PC-09) all exist; or when care is transferred
  PC-07 pcmhh-screening           stops at allocation (7 working days)
  PC-10 pcmhh-caseload-review     stops at a care plan review (12 weeks); restarts from it
  PC-12 keeping-well-call         reminder 3 months after step out
  TT-08 tt-initial-assessment     stops at the first attended assessment (28 days; national 42)
  TT-09 tt-second-session         from the first appointment; stops at the next attended treatment (28 days; tail 90)
  TT-10 tt-kit-call               reminder ~28 days after the first appointment while waiting; stops with treatment or opt-out
  TT-13 tt-dna-contact            7 working days after a DNA; stops at any later contact
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from common.datetimes import (
    add_calendar_months,
    add_wall_clock,
    add_working_days,
    end_of_london_day,
    parse_source_datetime,
    to_fhir_instant,
)
from gateway.pathways.rules.schema import ClockRule, PrimaryCareRules, TalkingTherapiesRules

__all__ = [
    "due_time",
    "start_clock",
    "stop_clock",
    "running",
    "Pc08Facts",
    "pc08_stop_time",
    "clock_due_items",
    "ASSESSMENT_ATTENDED",
    "referral_to_treatment",
]

Clocks = dict[str, dict[str, Any]]

ASSESSMENT_ATTENDED = "initial assessment attended"  # the TT-08 clock's stop reason when the patient entered treatment


def due_time(rule: ClockRule, start: datetime) -> datetime:
    """When clock `rule` started at `start` falls due. A target (on_due: breach) stated in days, weeks, working days or
    months ends at the end of its last day, Europe/London (TT-08, TT-09: "within 28 days" of a referral at 09:00 on
    1 September is met by an assessment at any time on 29 September; issue 33); one stated in hours or minutes stays
    exact. A reminder (on_due: reminder) is due at the same London time of day."""
    if rule.after is not None:
        due = add_wall_clock(start, rule.after)
        whole_days = rule.after % timedelta(days=1) == timedelta(0)
    elif rule.after_working_days is not None:
        due, whole_days = add_working_days(start, rule.after_working_days), True
    else:
        assert rule.after_months is not None  # validated: exactly one window
        due, whole_days = add_calendar_months(start, rule.after_months), True
    return end_of_london_day(due) if whole_days and rule.on_due == "breach" else due


def start_clock(clocks: Clocks, name: str, rules: PrimaryCareRules | TalkingTherapiesRules, start: datetime) -> Clocks:
    """(Re)start clock `name` at `start`; a restarted clock forgets its earlier stop."""
    rule = rules.clocks[name]
    due = due_time(rule, start)
    return clocks | {name: {"name": name, "rule": rule.rule, "start": to_fhir_instant(start), "due": to_fhir_instant(due)}}


def stop_clock(clocks: Clocks, name: str, when: datetime, reason: str) -> Clocks:
    """Stop a running clock (a stopped or absent clock is left as it is)."""
    clock = clocks.get(name)
    if clock is None or clock.get("stopped"):
        return clocks
    return clocks | {name: clock | {"stopped": to_fhir_instant(when), "reason": reason}}


def running(clocks: Clocks, name: str) -> bool:
    return name in clocks and not clocks[name].get("stopped")


@dataclass(frozen=True)
class Pc08Facts:
    """When each PC-08 item was first recorded after the clock started (None: not yet)."""

    assessment: datetime | None
    baseline_measure: datetime | None
    intervention_or_care_plan: datetime | None


def pc08_stop_time(facts: Pc08Facts) -> datetime | None:
    """PC-08: the 4-week clock stops when the last of the three items is recorded, and not before all three exist."""
    items = (facts.assessment, facts.baseline_measure, facts.intervention_or_care_plan)
    if any(item is None for item in items):
        return None
    return max(item for item in items if item is not None)


def clock_due_items(clocks: Clocks, now: datetime) -> list[dict[str, Any]]:
    """Running clocks whose due time has come (each makes one Task, whatever the number of ticks)."""
    return [c for c in clocks.values() if not c.get("stopped") and parse_source_datetime(c["due"]) <= now]


def referral_to_treatment(clocks: Clocks) -> tuple[datetime, datetime] | None:
    """TT-08: (referral, first treatment) once the referral-to-assessment clock stopped at an attended assessment.

    The first attended assessment is the first treatment appointment (the TT-09 clock runs from it). A clock
    stopped any other way (a discharge after a DNA, a transfer) is a referral that did not enter treatment: None.
    """
    clock = clocks.get("tt-initial-assessment")
    if clock is None or clock.get("reason") != ASSESSMENT_ATTENDED or not clock.get("stopped"):
        return None
    return parse_source_datetime(clock["start"]), parse_source_datetime(clock["stopped"])
