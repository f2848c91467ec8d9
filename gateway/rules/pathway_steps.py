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

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from adapters.problems import GatewayInputError, Kind, Problem
from fhir_mapping.datetimes import parse_source_datetime, to_fhir_instant
from fhir_mapping.episodes import episode_clocks, with_clocks, with_exit, with_step
from gateway.clock import CLOCK_SKEW
from gateway.rules.cas_ops import Params
from gateway.rules.pathway_clocks import ASSESSMENT_ATTENDED, running, start_clock, stop_clock
from gateway.rules.pathway_schema import PrimaryCareRules, TalkingTherapiesRules

__all__ = [
    "EPISODE_OPERATIONS",
    "MISSABLE_IN_TREATMENT",
    "OPEN_EPISODE",
    "EpisodeFacts",
    "StepResult",
    "apply_episode_operation",
    "close_episode",
    "CONTACT_KINDS",
    "Letter",
    "Work",
]

CONTACT_KINDS = ("assessment", "treatment", "review-only", "mhp-session", "care-plan-review", "patient-contact")
OUTCOMES = ("attended", "dna", "cancelled")
DIRECTIONS = ("up", "down", "across", "out")
OPEN_EPISODE = ("planned", "waitlist", "active", "onhold")  # EpisodeOfCare statuses of an episode still in care
# TT-13 misses that count once in treatment; TT-19: KIT appointments ("review only") included
MISSABLE_IN_TREATMENT = ("assessment", "treatment", "review-only")


@dataclass(frozen=True)
class EpisodeFacts:
    """What the store says about the episode (looked up by the service layer before the rule runs)."""

    sessions_at_step: int  # attended contacts that count as sessions at the current step (not review-only, TT-10)
    dna_in_treatment: int  # DNAs and cancellations since treatment started (TT-13)
    assessed: bool  # an attended assessment exists (TT-08)
    treatments_attended: int
    dialog_plus_in_force: bool  # PC-06/PC-09
    dialog_means: tuple[float, ...] = ()  # PC-11: DIALOG mean scores, oldest first
    self_referred: bool = False
    gp_contact_agreed: bool | None = None
    outcome_measures: frozenset[str] = frozenset()  # PC-14: measure ids scored for the patient since the episode started
    failed_booking_attempts: int = 0  # TT-17: failed attempts to arrange the initial assessment


@dataclass(frozen=True)
class Letter:
    letter_type: str  # tt-assessment-outcome | tt-progress | tt-discharge | signposting | pc-transfer-of-care | ...
    display: str
    to_gp: bool
    to_referrer: bool
    copy_to_patient: bool
    lines: tuple[str, ...]
    rule_ids: tuple[str, ...]


@dataclass(frozen=True)
class Work:
    kind: str  # a pathway-task code
    display: str
    summary: str
    rule_ids: tuple[str, ...]
    priority: str = "routine"


@dataclass
class StepResult:
    episode: dict[str, Any]
    summary: str
    rule_ids: list[str] = field(default_factory=list)
    contact: dict[str, Any] | None = None  # the contact to record as an Encounter: kind, outcome, when, practitioner
    letters: list[Letter] = field(default_factory=list)
    work: list[Work] = field(default_factory=list)
    transfer: tuple[str, str] | None = None  # (route, where) for an onward referral
    flag: str | None = None  # an alert to raise (TT-10 KIT opt-out)

    def because(self, rule: str, text: str) -> None:
        if rule not in self.rule_ids:
            self.rule_ids.append(rule)
        self.summary = f"{self.summary}; {rule}: {text}" if self.summary else f"{rule}: {text}"


def _refuse(kind: Kind, name: str, message: str) -> GatewayInputError:
    return GatewayInputError(Problem(kind, f"Parameters.parameter.where(name='{name}')", message))


def current_step(episode: dict[str, Any]) -> str:
    return str(episode["type"][1]["coding"][0]["code"])


def _status(episode: dict[str, Any], status: str, moment: datetime) -> dict[str, Any]:
    if episode["status"] == status:
        return episode
    # a back-dated contact after a later status change: the status periods never run backwards (FHIR per-1)
    latest = max(parse_source_datetime(h["period"]["start"]) for h in episode["statusHistory"])
    when = to_fhir_instant(max(moment, latest))
    history = [
        h if (h.get("period") or {}).get("end") else h | {"period": {**h.get("period", {}), "end": when}} for h in episode["statusHistory"]
    ]
    out = episode | {"status": status, "statusHistory": [*history, {"status": status, "period": {"start": when}}]}
    if status in ("finished", "cancelled"):
        out["period"] = {**episode["period"], "end": when}
    return out


def close_episode(episode: dict[str, Any], moment: datetime) -> dict[str, Any]:
    """The episode finished at `moment` (status history and period end follow)."""
    return _status(episode, "finished", moment)


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


def allocate(episode: dict[str, Any], params: Params, rules: PrimaryCareRules | TalkingTherapiesRules, now: datetime) -> StepResult:
    practitioner = params.string("practitioner")
    mdt = params.boolean("mdt") or False
    if not practitioner and not mdt:
        raise _refuse(Kind.REQUIRED, "practitioner", "name the key worker / therapist, or set mdt for an MDT discussion")
    intervention = params.string("intervention")
    out = {k: v for k, v in episode.items() if k != "meta"}
    if practitioner:
        out["careManager"] = {"display": practitioner}
    kept = [e for e in out.get("extension", []) if e["url"] != _INTERVENTION_URL]
    out["extension"] = kept + ([{"url": _INTERVENTION_URL, "valueString": intervention}] if intervention else [])
    result = StepResult(episode=out, summary="")
    clocks = episode_clocks(out)
    if isinstance(rules, PrimaryCareRules) and current_step(out) == "pcmhh":
        clocks = stop_clock(clocks, "pcmhh-screening", now, "allocated" if practitioner else "to MDT")
        result.because("PC-07", f"screened and allocated to {'the MDT' if mdt and not practitioner else 'a key worker'}")
        if practitioner and not running(clocks, "pcmhh-caseload-review"):
            clocks = start_clock(clocks, "pcmhh-caseload-review", rules, now)
            result.because("PC-10", "on the hub caseload: care plan review due within 12 weeks")
    else:
        result.because("TT-07" if isinstance(rules, TalkingTherapiesRules) else "PC-05", "allocated")
    result.episode = with_clocks(out, clocks)
    return result


_INTERVENTION_URL = "https://fhir.iap-gateway.org/StructureDefinition/planned-intervention"


def step(
    episode: dict[str, Any], params: Params, rules: PrimaryCareRules | TalkingTherapiesRules, facts: EpisodeFacts, now: datetime
) -> StepResult:
    direction = params.code("direction", DIRECTIONS, required=True) or ""
    target = params.string("to", required=True) or ""
    where = params.string("where")
    here = current_step(episode)
    clocks = episode_clocks(episode)
    result = StepResult(episode=episode, summary="")
    in_service = target in rules.service.teams.by_step and target not in ("duty",)
    if in_service:
        if target == here:
            raise _refuse(Kind.BUSINESS_RULE, "to", f"the patient is already at {here}")
        if isinstance(rules, PrimaryCareRules):
            clocks = _pc_step_within(here, target, direction, rules, facts, clocks, result, now)
        else:
            if here == "step-2" and target == "step-3":
                result.because("TT-16", "step up from step 2 to step 3 is prioritised in the team")
            result.because("TT-07", f"{direction} from {here} to {target}")
        result.episode = with_step(episode, target, rules.service.teams.by_step[target], now, direction, result.rule_ids[0])
        result.episode = with_clocks(result.episode, clocks)
        return result
    # leaving the service: PC-13 names the destination (no discharge into nothing)
    route = target if target in rules.routes else None
    destination = where or (rules.routes.get(target) if route else None)  # type: ignore[call-overload]
    if direction != "out" and not destination:
        raise _refuse(
            Kind.VALUE,
            "to",
            f"{direction}: 'to' must be a step of this service {sorted(rules.service.teams.by_step)} "
            f"or a route {sorted(rules.routes)} (PC-13: name where the patient goes)",
        )
    if direction == "out":
        destination = destination or "the GP practice (no further intervention needed)"
    rule = "PC-13" if isinstance(rules, PrimaryCareRules) else "TT-14"
    result.because(rule, f"step {direction} to {destination}")
    for name, clock in clocks.items():
        if not clock.get("stopped"):
            clocks = stop_clock(clocks, name, now, f"care transferred: step {direction}")
            if name == "pcmhh-4-week-wait":
                result.because("PC-08", "the 4-week clock stops: care transferred")
    if isinstance(rules, PrimaryCareRules):
        if direction == "out" and here == "pcmhh":
            clocks = start_clock(clocks, "keeping-well-call", rules, now)
            result.because("PC-12", "keeping-well call about 3 months after step out")
        if direction == "up" and here == "pcmhh" and not facts.dialog_plus_in_force:
            result.because("PC-14", "no DIALOG+ on record to send with the step up to specialist services")
        letter = Letter(
            "pc-transfer-of-care",
            "Primary care mental health transfer of care",
            to_gp=True,
            to_referrer=False,
            copy_to_patient=True,
            lines=(f"Care transferred (step {direction}) to {destination}", _pc14_outcome_measures(rules, facts, result)),
            rule_ids=("PC-13", "PC-14"),
        )
    else:
        letter = Letter(
            "tt-discharge",
            "Talking Therapies discharge",
            to_gp=True,
            to_referrer=False,
            copy_to_patient=True,
            lines=(f"Discharged from NHS Talking Therapies (step {direction}) to {destination}",),
            rule_ids=("TT-14",),
        )
        if route in ("secondary-care", "access-and-assessment"):
            result.because("TT-16", "risk: referral to secondary care with notes and a change-of-need letter before the record closes")
    result.letters.append(letter)
    if route or (direction != "out" and destination):
        result.transfer = (route or "signpost", destination or "")
    result.episode = with_clocks(_status(with_exit(episode, now, direction), "finished", now), clocks)
    return result


def _pc14_outcome_measures(rules: PrimaryCareRules, facts: EpisodeFacts, result: StepResult) -> str:
    """PC-14: at least `min_outcome_measures` of the outcome measures (DIALOG, ReQoL-10, GBO: the rule file's
    `baseline_measures`) should be completed; leaving the service, the decision and the letter say which were.
    A "should": a shortfall is recorded, not refused (the patient still moves on)."""
    done = [m for m in rules.baseline_measures if m in facts.outcome_measures]
    missing = [m for m in rules.baseline_measures if m not in facts.outcome_measures]
    if len(done) < rules.min_outcome_measures:
        result.because(
            "PC-14",
            f"only {len(done)} of the outcome measures completed in this episode ({', '.join(done) or 'none'}; "
            f"not {', '.join(missing)}): the SOP asks for at least {rules.min_outcome_measures}",
        )
    else:
        result.because("PC-14", f"{len(done)} outcome measures completed in this episode: {', '.join(done)}")
    return f"Outcome measures completed in this episode (PC-14): {', '.join(done) or 'none'}"


def _pc_step_within(
    here: str,
    target: str,
    direction: str,
    rules: PrimaryCareRules,
    facts: EpisodeFacts,
    clocks: dict[str, Any],
    result: StepResult,
    now: datetime,
) -> dict[str, Any]:
    if target == "pcmhh" and direction == "up":
        if here == "mhp" and not facts.dialog_plus_in_force:
            raise _refuse(
                Kind.BUSINESS_RULE,
                "to",
                "PC-06: a step up to the hub after MHP sessions needs a completed DIALOG+ care plan "
                "(care plan MHS008 and agreement MHS009, PC-09); none is in force",
            )
        clocks = start_clock(clocks, "pcmhh-screening", rules, now)
        clocks = start_clock(clocks, "pcmhh-4-week-wait", rules, now)
        result.because("PC-06", "step up to the hub: the 4-week wait starts now")
        result.because("PC-07", "the hub screens and allocates within 7 working days")
    else:
        result.because("PC-13", f"step {direction} from {here} to {target}")
    return clocks


def kit_opt_out(episode: dict[str, Any], params: Params, rules: PrimaryCareRules | TalkingTherapiesRules, now: datetime) -> StepResult:
    if not isinstance(rules, TalkingTherapiesRules):
        raise _refuse(Kind.NOT_SUPPORTED, "operation", "keeping-in-touch calls are a Talking Therapies process (TT-10)")
    clocks = stop_clock(episode_clocks(episode), "tt-kit-call", now, "client opted out of keeping-in-touch calls")
    result = StepResult(episode=with_clocks(episode, clocks), summary="", flag="Opted out of keeping-in-touch (KIT) calls (TT-10)")
    result.because("TT-10", "client opted out of KIT calls: alert recorded; GP/referrer told in writing")
    result.letters.append(
        Letter(
            "tt-progress",
            "Keeping-in-touch opt-out",
            to_gp=True,
            to_referrer=True,
            copy_to_patient=True,
            lines=(
                "The client has chosen not to have keeping-in-touch calls while waiting for treatment. If things change, "
                "please contact us using the details above; in an emergency call 999, or NHS 111 and choose the mental health option.",
            ),  # TT-10
            rule_ids=("TT-10",),
        )
    )
    return result


def progress_letter(episode: dict[str, Any], params: Params, rules: PrimaryCareRules | TalkingTherapiesRules, now: datetime) -> StepResult:
    if not isinstance(rules, TalkingTherapiesRules):
        raise _refuse(Kind.NOT_SUPPORTED, "operation", "progress letters with PHQ-9 and GAD-7 are a Talking Therapies process (TT-14)")
    result = StepResult(episode=episode, summary="")
    result.because("TT-14", "progress update to the GP with the latest PHQ-9 and GAD-7")
    result.letters.append(
        Letter(
            "tt-progress",
            "Talking Therapies progress",
            to_gp=True,
            to_referrer=False,
            copy_to_patient=True,
            lines=("Therapy continues; the latest PHQ-9 and GAD-7 scores are shown above.",),  # TT-14
            rule_ids=("TT-14",),
        )
    )
    return result


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
        from gateway.rules.pathway_booking import record_booking_attempt  # TT-17 builds on this module: imported late

        return record_booking_attempt(episode, params, rules, facts, now)
    raise GatewayInputError(Problem(Kind.NOT_SUPPORTED, "operation", f"unknown operation ${name[:40]}; known: {list(EPISODE_OPERATIONS)}"))
