"""TT-17: contact attempts to book the initial assessment (North Essex policy 9.1).

"If, following a reasonable number of contact attempts, it is not possible to arrange an Initial Assessment, the case
will be closed and the referrer notified." The number is the rule file's `assessment_booking_attempts` (the seed gives
none: a local decision). Operation `EpisodeOfCare/{id}/$record-booking-attempt` records one failed attempt (a contact
Encounter of kind `booking-attempt`, so a re-sent attempt is the same Encounter and changes nothing); the attempt that
reaches the limit closes the episode (every running clock stops) and writes to the referrer, GP and patient through the
outbox in the same transaction (TT-14 consent is checked when the letters are sent).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from adapters.problems import GatewayInputError, Kind, Problem
from common.datetimes import parse_source_datetime, to_fhir_instant
from fhir_mapping.episodes import episode_clocks, with_clocks
from gateway.cas.rules.ops import Params
from gateway.pathways.rules.clocks import stop_clock
from gateway.pathways.rules.episode import EpisodeFacts, Letter, StepResult, close_episode, current_step
from gateway.pathways.rules.schema import PrimaryCareRules, TalkingTherapiesRules
from gateway.platform.clock import CLOCK_SKEW

__all__ = ["BOOKING_ATTEMPT", "record_booking_attempt"]

BOOKING_ATTEMPT = "booking-attempt"  # the contact kind of a failed attempt to arrange the initial assessment


def _refuse(kind: Kind, name: str, message: str) -> GatewayInputError:
    return GatewayInputError(Problem(kind, f"Parameters.parameter.where(name='{name}')", message))


def record_booking_attempt(
    episode: dict[str, Any], params: Params, rules: PrimaryCareRules | TalkingTherapiesRules, facts: EpisodeFacts, now: datetime
) -> StepResult:
    """TT-17: one failed attempt to contact the patient to book the initial assessment; at the limit the case closes."""
    if not isinstance(rules, TalkingTherapiesRules):
        raise _refuse(
            Kind.NOT_SUPPORTED, "operation", "booking attempts before the initial assessment are a Talking Therapies process (TT-17)"
        )
    when = params.moment("date", now)
    if when < parse_source_datetime(episode["period"]["start"]):
        raise _refuse(
            Kind.BUSINESS_RULE, "date", f"the attempt ({to_fhir_instant(when)}) is before the referral ({episode['period']['start']})"
        )
    if when > now + CLOCK_SKEW:
        raise _refuse(Kind.BUSINESS_RULE, "date", f"the attempt ({to_fhir_instant(when)}) is in the future (now {to_fhir_instant(now)})")
    if facts.assessed:
        raise _refuse(Kind.BUSINESS_RULE, "operation", "TT-17: the initial assessment has taken place: there is nothing left to book")
    limit = rules.assessment_booking_attempts
    attempt = facts.failed_booking_attempts + 1
    contact = {"kind": BOOKING_ATTEMPT, "outcome": "failed", "when": when, "step": current_step(episode)}
    contact["practitioner"] = params.string("practitioner")
    result = StepResult(episode=episode, summary="", contact=contact)
    setting = f"rule file assessment_booking_attempts: {limit}"
    if attempt < limit:
        result.because("TT-17", f"failed contact attempt {attempt} of {limit} to arrange the initial assessment: try again ({setting})")
        return result
    why = f"not possible to arrange an initial assessment after {attempt} contact attempts"
    result.because("TT-17", f"failed contact attempt {attempt} of {limit}: {why}: case closed, referrer notified ({setting})")
    clocks = episode_clocks(episode)
    for name, clock in clocks.items():
        if not clock.get("stopped"):
            clocks = stop_clock(clocks, name, when, f"case closed: {why}")
    result.episode = close_episode(with_clocks(episode, clocks), when)
    result.letters.append(
        Letter(
            "tt-discharge",
            "Talking Therapies: referral closed",
            to_gp=True,
            to_referrer=True,
            copy_to_patient=True,
            lines=(
                f"We tried to contact the patient {attempt} times to arrange an initial assessment and could not reach them, "
                "so the referral has been closed. The patient can refer themselves again at any time, or be referred again.",
            ),
            rule_ids=("TT-17", "TT-14"),
        )
    )
    return result
