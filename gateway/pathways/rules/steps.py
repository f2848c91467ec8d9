"""Operations on an episode of care (FHIR `EpisodeOfCare/{id}/$<name>`, a Parameters body); each checks its preconditions.

  record-contact  a contact: assessment | treatment | review-only (KIT) | mhp-session | care-plan-review | patient-contact,
                  attended | dna | cancelled.
                  PC-05 a 5th MHP session is refused without a step-up review; TT-12 session caps (over the standard
                  cap needs a supervisor's agreement, recorded; over the maximum is refused); TT-08/09/10 clocks;
                  TT-13 DNA: at assessment -> discharge; in treatment the 2nd DNA/cancellation -> discharge, the 1st
                  starts the 7-working-day contact clock; PC-10 a care plan review restarts the 12-week clock (PC-11 trend)
  allocate        PC-07 the hub allocates to a key worker / intervention (or MDT): stops screening, starts PC-10
  step            up | down | across | out. PC-06 up to the hub needs DIALOG+ when the patient saw an MHP (starts the
                  4-week and screening clocks); PC-13 every exit names where the patient goes; PC-12 keeping-well
                  clock at step out from the hub; TT-14 discharge letter; TT-16 step 2 -> 3 is prioritised
  kit-opt-out     TT-10: the client opts out of KIT calls: alert, letter to GP/referrer
  progress-letter TT-14: progress to the GP with the latest PHQ-9 and GAD-7

Refusals raise GatewayInputError and change nothing. Results name the rule ids for the Provenance.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from adapters.problems import GatewayInputError, Kind, Problem
from gateway.cas.rules.ops import Params
from gateway.pathways.rules.booking import record_booking_attempt
from gateway.pathways.rules.contacts import record_contact
from gateway.pathways.rules.episode import (
    CONTACT_KINDS,
    MISSABLE_IN_TREATMENT,
    OPEN_EPISODE,
    EpisodeFacts,
    Letter,
    StepResult,
    Work,
    _refuse,
    close_episode,
    current_step,
)
from gateway.pathways.rules.moves import allocate, kit_opt_out, progress_letter, step
from gateway.pathways.rules.schema import PrimaryCareRules, TalkingTherapiesRules

__all__ = [
    "EPISODE_OPERATIONS",
    "MISSABLE_IN_TREATMENT",
    "OPEN_EPISODE",
    "EpisodeFacts",
    "StepResult",
    "apply_episode_operation",
    "close_episode",
    "current_step",
    "CONTACT_KINDS",
    "Letter",
    "Work",
]

EPISODE_OPERATIONS = ("record-contact", "allocate", "step", "kit-opt-out", "progress-letter", "record-booking-attempt")


def apply_episode_operation(
    name: str, episode: dict[str, Any], params: Params, rules: PrimaryCareRules | TalkingTherapiesRules, facts: EpisodeFacts, now: datetime
) -> StepResult:
    if episode["status"] not in OPEN_EPISODE:
        raise _refuse(Kind.BUSINESS_RULE, "operation", f"the episode is {episode['status']}: a new referral starts a new episode")
    if name == "record-contact":
        return record_contact(episode, params, rules, facts, now)
    if name == "allocate":
        return allocate(episode, params, rules, now)
    if name == "step":
        return step(episode, params, rules, facts, now)
    if name == "kit-opt-out":
        return kit_opt_out(episode, params, rules, now)
    if name == "progress-letter":
        return progress_letter(episode, params, rules, now)
    if name == "record-booking-attempt":
        return record_booking_attempt(episode, params, rules, facts, now)
    raise GatewayInputError(Problem(Kind.NOT_SUPPORTED, "operation", f"unknown operation ${name[:40]}; known: {list(EPISODE_OPERATIONS)}"))
