"""$allocate, $step, $kit-opt-out and $progress-letter (pathway_steps dispatches them): PC-06/PC-07 step up to the hub,
PC-12/PC-13 leaving with a named destination, PC-14 outcome measures, TT-10 KIT opt-out, TT-14 letters, TT-16 step-up
priority. Refusals raise GatewayInputError and change nothing."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from adapters.problems import Kind
from fhir_mapping.episodes import episode_clocks, with_clocks, with_exit, with_step
from gateway.cas.rules.ops import Params
from gateway.pathways.rules.clocks import running, start_clock, stop_clock
from gateway.pathways.rules.episode import DIRECTIONS, EpisodeFacts, Letter, StepResult, _refuse, _status, current_step
from gateway.pathways.rules.schema import PrimaryCareRules, TalkingTherapiesRules

__all__ = ["allocate", "kit_opt_out", "progress_letter", "step"]


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
