"""CAS queue intake: the priority, classification and breach time of a new case.

Applies CAS-01 (one queue per service), CAS-03 (call-handler cases: 6-hour default), CAS-06 (MHPL:
timeframe by caller service), CAS-15 (Specialist Desk: out of hours only),
CAS-04 (any red flag -> Urgent CN Review, set by the system; on a timed Pathways disposition the earlier of
the two windows by default, red_flags.on_timed_disposition), CAS-05 (Pathways cases:
timeframe of the Dx code), and the BaRS callback deadline cap (occurrencePeriod.end).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from adapters.problems import Kind, Problem
from adapters.referral import Channel, Referral
from common.datetimes import add_working_days, format_iso_duration
from gateway.cas.rules.schema import RuleRegistry, ServiceRules

__all__ = ["QueueDecision", "decide_intake"]


@dataclass(frozen=True)
class QueueDecision:
    """Everything the CAS queue Task needs, and why (rule ids and plain reasons, no patient data)."""

    rules: ServiceRules
    timeframe: timedelta
    breach_time: datetime
    priority: str  # FHIR Task.priority
    classification: str | None  # e.g. "urgent-cn-review"; None = blank classification
    dx: str | None
    rule_ids: tuple[str, ...]
    reasons: tuple[str, ...]
    specialist_desk: bool = False  # CAS-15: out-of-hours Specialist Desk case: GP notified when it completes
    warnings: tuple[Problem, ...] = ()  # told to the sender with the accepted case (e.g. CAS-06 unknown caller service)


def decide_intake(referral: Referral, registry: RuleRegistry) -> QueueDecision | list[Problem]:
    """The queue decision for `referral`, or the problems that stop one (unknown destination or Dx)."""
    rules = registry.for_destination(referral.destination)
    if rules is None:
        return [
            Problem(
                Kind.NOT_SUPPORTED,
                referral.destination_element,
                f"destination DoS service id {referral.destination!r} is not a service this gateway receives for",
            )
        ]
    rule_ids = ["CAS-01"]
    reasons = [f"CAS-01: case lands on the {rules.service.name} CAS queue"]
    warnings: list[Problem] = []
    classification: str | None = None
    dx = referral.pathways.dx if referral.pathways else None

    if referral.channel.pathways_assessed:
        if dx is None:
            # the adapter has already reported the missing/invalid Dx; nothing more to decide
            return []
        disposition = rules.dispositions.get(dx)
        if disposition is None:
            return [
                Problem(
                    Kind.NOT_SUPPORTED,
                    referral.pathways.dx_element if referral.pathways else "",
                    f"NHS Pathways disposition {dx} has no callback timeframe in the {rules.label} rules; "
                    "this service does not take that disposition",
                )
            ]
        if disposition.within is not None:
            breach = referral.call_time + disposition.within
        else:
            breach = add_working_days(referral.call_time, disposition.within_working_days or 0)
        rule_ids.append("CAS-05")
        reasons.append(f"CAS-05: {dx} '{disposition.wording}'")
    elif referral.channel is Channel.MHPL:
        service = referral.professional.service if referral.professional else ""
        window = rules.mhpl.timeframes.get(service)
        rule_ids.append("CAS-06")
        if window is None:
            # CAS-06: "the call handlers will create a case" for an emergency-services professional: never refused;
            # the shortest configured MHPL window and Urgent CN Review (mhpl.unknown_service_classification)
            window = min(rules.mhpl.timeframes.values())
            classification = rules.mhpl.unknown_service_classification
            warnings.append(
                Problem(
                    Kind.BUSINESS_RULE,
                    "caller.service",
                    f"MHPL caller service {service!r} has no timeframe in the {rules.label} rules "
                    f"(known: {sorted(rules.mhpl.timeframes)}): case taken with the shortest MHPL window, "
                    f"{format_iso_duration(window)}, classified Urgent CN Review (CAS-06)",
                    severity="warning",
                )
            )
            reasons.append(
                f"CAS-06: MHPL call from {service}, a service with no configured timeframe: shortest MHPL window "
                f"{format_iso_duration(window)} (mhpl.timeframes) and {classification} (mhpl.unknown_service_classification)"
            )
        else:
            reasons.append(f"CAS-06: MHPL call from {service}, {format_iso_duration(window)} timeframe")
        breach = referral.call_time + window
    else:
        breach = referral.call_time + rules.call_handler_timeframe
        rule_ids.append("CAS-03")
        reasons.append(f"CAS-03: {referral.channel.value} call-handler case, {format_iso_duration(rules.call_handler_timeframe)} default")

    specialist_desk = referral.caller_relationship == rules.specialist_desk.caller_relationship
    if specialist_desk:
        if rules.specialist_desk.in_hours.covers(referral.call_time):
            return [
                Problem(
                    Kind.BUSINESS_RULE,
                    "caller.relationship",
                    "CAS-15: in hours the Specialist Desk caller is transferred to the patient's GP practice; no case is created",
                )
            ]
        rule_ids.append("CAS-15")
        reasons.append("CAS-15: out-of-hours Specialist Desk case: notes go to the GP practice when the case completes")

    if referral.callback_deadline is not None and referral.callback_deadline < breach:
        breach = referral.callback_deadline
        reasons.append("sender's callback deadline (ServiceRequest.occurrencePeriod.end) is earlier: breach time capped to it")

    positive = [f.question_id for f in referral.red_flags if f.answer]
    matched = [
        f.code
        for f in referral.risk_flags
        for m in rules.red_flags.bars_flags
        if (f.category_system, f.category_code) == (m.system, m.code) or (f.code_system, f.code) == (m.system, m.code)
    ]
    if positive or matched:
        classification = rules.red_flags.classification
        rule_ids.append("CAS-04")
        what = f"red-flag question(s) {', '.join(positive)} answered yes" if positive else "risk Flag in the referral"
        reasons.append(f"CAS-04: {what}: classified Urgent CN Review")
        if referral.channel.pathways_assessed:
            breach = _red_flag_window(rules, referral.call_time, breach, dx, reasons)

    timeframe = breach - referral.call_time
    return QueueDecision(
        rules=rules,
        timeframe=timeframe,
        breach_time=breach,
        priority=rules.task_priority_for(timeframe),
        classification=classification,
        dx=dx,
        rule_ids=tuple(rule_ids),
        reasons=tuple(reasons),
        specialist_desk=specialist_desk,
        warnings=tuple(warnings),
    )


def _red_flag_window(rules: ServiceRules, call_time: datetime, breach: datetime, dx: str | None, reasons: list[str]) -> datetime:
    """CAS-04 with CAS-05: a red flag on a timed Pathways disposition. By default (red_flags.on_timed_disposition:
    earlier) the case's window is the earlier of the disposition's and the red-flag window (red_flags.within): a person
    with a positive red flag does not wait 12 hours because 111 gave a Dx14 (issue 33). Recorded in the rule trace."""
    flagged = call_time + rules.red_flags.within
    setting = f"red_flags.on_timed_disposition: {rules.red_flags.on_timed_disposition}"
    window = format_iso_duration(rules.red_flags.within)
    if breach <= flagged:
        reasons.append(f"CAS-04 with CAS-05: {dx} window kept: the red-flag window {window} (red_flags.within) is not earlier")
        return breach
    if rules.red_flags.on_timed_disposition == "disposition":
        reasons.append(f"CAS-04 with CAS-05: red flag on {dx}: the disposition's window kept, red_flags.within {window} ({setting})")
        return breach
    reasons.append(
        f"CAS-04 with CAS-05: red flag on {dx} ({format_iso_duration(breach - call_time)}): window {window}, "
        f"the earlier of the disposition's and the red-flag window (red_flags.within; {setting})"
    )
    return flagged
