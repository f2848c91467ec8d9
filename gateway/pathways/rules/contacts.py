"""$record-contact (pathway_steps dispatches it): PC-05 a 5th MHP session needs a step-up review; TT-12 session caps;
TT-08/09/10 clocks; TT-13 DNA (TT-19 KIT appointments included); PC-10 a care plan review restarts the 12-week clock
(PC-11 trend). Refusals raise GatewayInputError and change nothing."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from adapters.problems import Kind
from common.datetimes import parse_source_datetime, to_fhir_instant
from fhir_mapping.episodes import episode_clocks, with_clocks
from gateway.cas.rules.ops import Params
from gateway.pathways.rules.clocks import ASSESSMENT_ATTENDED, running, start_clock, stop_clock
from gateway.pathways.rules.episode import (
    CONTACT_KINDS,
    MISSABLE_IN_TREATMENT,
    OUTCOMES,
    EpisodeFacts,
    Letter,
    StepResult,
    _refuse,
    _status,
    current_step,
)
from gateway.pathways.rules.schema import PrimaryCareRules, TalkingTherapiesRules
from gateway.platform.clock import CLOCK_SKEW

__all__ = ["record_contact"]


def record_contact(
    episode: dict[str, Any], params: Params, rules: PrimaryCareRules | TalkingTherapiesRules, facts: EpisodeFacts, now: datetime
) -> StepResult:
    kind = params.code("kind", CONTACT_KINDS, required=True) or ""
    outcome = params.code("outcome", OUTCOMES) or "attended"
    when = params.moment("date", now)
    if when < parse_source_datetime(episode["period"]["start"]):  # a clock must not stop before it started (TT-08, PC-08)
        raise _refuse(
            Kind.BUSINESS_RULE,
            "date",
            f"the contact ({to_fhir_instant(when)}) is before the episode began ({episode['period']['start']}): "
            "it belongs to an earlier course of care",
        )
    if when > now + CLOCK_SKEW:  # a clock stopped by a session yet to happen would report a wait that has not ended
        raise _refuse(
            Kind.BUSINESS_RULE,
            "date",
            f"the contact ({to_fhir_instant(when)}) is in the future (now {to_fhir_instant(now)}): record it once it has happened",
        )
    step = current_step(episode)
    result = StepResult(episode=episode, summary="", contact={"kind": kind, "outcome": outcome, "when": when, "step": step})
    result.contact["practitioner"] = params.string("practitioner")  # type: ignore[index]
    clocks = episode_clocks(episode)
    attended = outcome == "attended"
    counts = kind in ("assessment", "treatment", "mhp-session") and attended
    if counts:
        _check_session_cap(params, rules, step, facts.sessions_at_step + 1, result)
    if isinstance(rules, TalkingTherapiesRules):
        clocks = _tt_contact(kind, outcome, when, rules, facts, clocks, result)
    else:
        clocks = _pc_contact(kind, outcome, when, rules, facts, clocks, result)
    if result.episode["status"] not in ("finished", "cancelled") and attended and kind != "patient-contact":
        result.episode = _status(result.episode, "active", when)
    result.episode = with_clocks(result.episode, clocks)
    result.because("TT-11" if isinstance(rules, TalkingTherapiesRules) else "PC-04", f"{kind} contact recorded ({outcome})")
    return result


def _check_session_cap(params: Params, rules: PrimaryCareRules | TalkingTherapiesRules, step: str, number: int, result: StepResult) -> None:
    if isinstance(rules, PrimaryCareRules):
        if step == "mhp" and number > rules.mhp_session_cap:
            if not params.boolean("step-up-review"):
                raise _refuse(
                    Kind.BUSINESS_RULE,
                    "step-up-review",
                    f"PC-05: the MHP gives 1 to {rules.mhp_session_cap} sessions; session {number} needs a review "
                    "and step up to the hub (set step-up-review after reviewing, or step the patient up)",
                )
            result.because("PC-05", f"session {number} after a step-up review")
        return
    cap = rules.session_caps.get(step)  # type: ignore[call-overload]
    if cap is None:
        return
    if number > cap.with_supervisor:
        raise _refuse(Kind.BUSINESS_RULE, "kind", f"TT-12: {step} allows at most {cap.with_supervisor} contacts; this would be {number}")
    if number > cap.standard:
        supervisor = params.string("supervisor-agreement")
        if not supervisor:
            raise _refuse(
                Kind.BUSINESS_RULE,
                "supervisor-agreement",
                f"TT-12: {step} gives up to {cap.standard} contacts; contact {number} needs the clinical supervisor's agreement",
            )
        result.because("TT-12", f"contact {number} of at most {cap.with_supervisor}, agreed by supervisor {supervisor}")


def _tt_contact(
    kind: str, outcome: str, when: datetime, rules: TalkingTherapiesRules, facts: EpisodeFacts, clocks: dict[str, Any], result: StepResult
) -> dict[str, Any]:
    if kind != "patient-contact" and outcome == "attended" or kind == "patient-contact":
        if running(clocks, "tt-dna-contact"):
            clocks = stop_clock(clocks, "tt-dna-contact", when, "contact after the DNA")
            result.because("TT-13", "contact within the 7 working days after a DNA")
    if outcome != "attended":
        return _tt_missed(kind, outcome, when, rules, facts, clocks, result)
    if kind == "assessment" and not facts.assessed:
        clocks = stop_clock(clocks, "tt-initial-assessment", when, ASSESSMENT_ATTENDED)
        clocks = start_clock(clocks, "tt-second-session", rules, when)
        clocks = start_clock(clocks, "tt-kit-call", rules, when)
        result.because("TT-08", "initial assessment attended: the referral-to-assessment clock stops")
        result.because("TT-09", "second treatment session due within 28 days of this first appointment")
        result.because("TT-10", "keeping-in-touch call due about 28 days from the first appointment while waiting")
        result.letters.append(
            Letter(
                "tt-assessment-outcome",
                "Talking Therapies assessment outcome",
                to_gp=True,
                to_referrer=False,
                copy_to_patient=True,
                lines=("Initial assessment completed. We will write again with progress during therapy and at discharge.",),  # TT-14
                rule_ids=("TT-14",),
            )
        )
    elif kind == "treatment" and running(clocks, "tt-second-session"):
        clocks = stop_clock(clocks, "tt-second-session", when, "next treatment session attended")
        clocks = stop_clock(clocks, "tt-kit-call", when, "in treatment: no keeping-in-touch call needed")
        result.because("TT-09", "treatment session attended: the second-session clock stops")
    elif kind == "review-only":
        clocks = stop_clock(clocks, "tt-kit-call", when, "keeping-in-touch call made")
        result.because("TT-10", "keeping-in-touch call recorded as review only: not counted as a session")
    return clocks


def _tt_missed(
    kind: str, outcome: str, when: datetime, rules: TalkingTherapiesRules, facts: EpisodeFacts, clocks: dict[str, Any], result: StepResult
) -> dict[str, Any]:
    """TT-13: DNA at assessment -> discharge; once in treatment the 2nd DNA or cancellation discharges.

    TT-19: a KIT appointment ("review only") is a standard appointment for these rules: its DNA or cancellation counts
    towards the discharge and a DNA starts the 7-working-day clock; it still never counts as a session (TT-12). A missed
    KIT leaves the KIT clock running: the call was not held.
    """
    if kind == "assessment" and not facts.assessed and outcome == "dna":
        result.because("TT-13", "did not attend the assessment: discharged; patient and referrer notified")
        return _discharge(result, when, clocks, "did not attend the initial assessment", ("TT-13", "TT-14"))
    kit = kind == "review-only"
    if kit:
        result.because("TT-19", f"KIT appointment (review only) {outcome}: the standard DNA and cancellation rules (TT-13) apply")
    if kind in MISSABLE_IN_TREATMENT and facts.assessed:
        missed = facts.dna_in_treatment + 1
        setting = f"rule file dna_discharge_in_treatment: {rules.dna_discharge_in_treatment}"
        if missed >= rules.dna_discharge_in_treatment:
            result.because(
                "TT-13",
                f"{missed} DNAs or cancellations in treatment: discharged (reviewable); patient and referrer notified "
                f"(KIT appointments count, TT-19; {setting})",
            )
            rule_ids = ("TT-13", "TT-19", "TT-14") if kit else ("TT-13", "TT-14")
            return _discharge(result, when, clocks, f"{missed} missed sessions in treatment", rule_ids)
        result.because("TT-13", f"missed appointment {missed} of {rules.dna_discharge_in_treatment} before discharge ({setting})")
    if outcome == "dna":
        clocks = start_clock(clocks, "tt-dna-contact", rules, when)
        result.because("TT-13", "no contact within 7 working days of this DNA -> decision with the supervisor")
    return clocks


def _discharge(result: StepResult, when: datetime, clocks: dict[str, Any], why: str, rule_ids: tuple[str, ...]) -> dict[str, Any]:
    for name, clock in clocks.items():
        if not clock.get("stopped") and name != "keeping-well-call":
            clocks = stop_clock(clocks, name, when, f"discharged: {why}")
    result.episode = _status(result.episode, "finished", when)
    result.letters.append(
        Letter(
            "tt-discharge",
            "Talking Therapies discharge",
            to_gp=True,
            to_referrer=True,
            copy_to_patient=True,
            lines=(f"Discharged from NHS Talking Therapies: {why}",),
            rule_ids=rule_ids,
        )
    )
    return clocks


def _pc_contact(
    kind: str, outcome: str, when: datetime, rules: PrimaryCareRules, facts: EpisodeFacts, clocks: dict[str, Any], result: StepResult
) -> dict[str, Any]:
    if kind == "care-plan-review" and outcome == "attended":
        if running(clocks, "pcmhh-caseload-review"):
            clocks = start_clock(clocks, "pcmhh-caseload-review", rules, when)
            result.because("PC-10", "care plan review done: the 12-week review clock restarts")
        if len(facts.dialog_means) >= 2:
            change = facts.dialog_means[-1] - facts.dialog_means[-2]
            verdict = "improved" if change >= rules.dialog_improvement else "not improved"
            result.because("PC-11", f"DIALOG mean {facts.dialog_means[-2]:.2f} -> {facts.dialog_means[-1]:.2f}: {verdict}")
    return clocks
