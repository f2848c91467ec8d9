"""Referral routing for the primary care (PC) and Talking Therapies (TT) pathways: a referral in, a decision out.

Pure: reads the typed referral, the locality's rule file and facts the service layer looked up
(scored measures, whether a DIALOG+ care plan is in force); returns the decision with a
plain-words trace of every rule and input that decided it. Never a silent rejection (PC-13):
an excluded referral is signposted or redirected to a named destination.

  PC-01 eligibility: age >= 17y6m on the referral date; GP practice in the place's PCNs
  PC-02 exclusions -> signpost / crisis route / secondary care / Talking Therapies (never booked)
  PC-03 the triage coach (MHWBTC) does not take under-18s or these findings: booked with the MHP instead
  PC-06 step up to the hub (PCMHH): a DIALOG+ care plan is required when the patient saw an MHP; starts the 4-week clock
  PC-07 the hub screens step-ups within 7 working days (clock)
  TT-01 age by locality; TT-04 exclusions (GP informed); TT-16 risk -> secondary care / access and assessment
  TT-03 urgent self-referral -> duty worker telephone screening as a priority
  TT-05/06/07 step from the step table's three columns: the worse of the PHQ-9 and GAD-7 severities, functioning
              (WSAS or the referral's statement) and risk (pathway_step_table)
  TT-08 initial assessment clock from referral
"""

from __future__ import annotations

from dataclasses import dataclass, field

from adapters.pathway_referral import PathwayReferral
from adapters.problems import GatewayInputError, Kind, Problem
from common.datetimes import age_reached, format_iso_duration, london_date
from gateway.pathways.rules.schema import Exclusion, PrimaryCareRules, Route, TalkingTherapiesRules
from gateway.pathways.rules.step_table import Column, Columns, choose_step, functioning_column, risk_column

__all__ = ["Decision", "MeasureFact", "route_referral", "SEVERITY_ORDER", "ROUTE_ORDER"]

SEVERITY_ORDER = ("none", "mild", "moderate", "moderately-severe", "severe")
# when several exclusions apply, the most acute destination wins (crisis before anything else)
ROUTE_ORDER = ("crisis", "access-and-assessment", "secondary-care", "talking-therapies", "primary-care", "signpost")
_URGENT = ("urgent", "asap", "stat")


@dataclass(frozen=True)
class MeasureFact:
    measure: str  # phq-9, gad-7, ...
    score: float | None
    band: str | None
    on_file: str | None = None  # None: scored from the referral; else where the stored score is (e.g. "Observation/x of 2026-11-01")


@dataclass
class Decision:
    outcome: str  # accept | signpost | redirect
    rule_ids: list[str] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)
    step: str | None = None  # accepted: mhwbtc | mhp | pcmhh | step-2 | step-3 | screening
    team: str | None = None
    route: str | None = None  # signpost / redirect: crisis | secondary-care | ...
    where: str | None = None
    inform_gp: bool = False
    duty_screening: bool = False  # TT-03
    clocks: list[str] = field(default_factory=list)  # clocks started at the referral time
    columns: Columns | None = None  # TT-07: the step table's inputs (Talking Therapies, scored)
    decided_by: tuple[str, ...] = ()  # TT-07: the columns that decided the step
    senior_screening: bool = False  # TT-07: a senior clinician screens the referral (a column was unknown)

    def because(self, rule: str, text: str) -> None:
        if rule not in self.rule_ids:
            self.rule_ids.append(rule)
        self.trace.append(f"{rule}: {text}")


def route_referral(
    referral: PathwayReferral,
    rules: PrimaryCareRules | TalkingTherapiesRules,
    measures: dict[str, MeasureFact],
    dialog_plus_in_force: bool,
) -> Decision:
    """The routing decision for one referral. Unknown findings are refused (GatewayInputError), not guessed."""
    _check_findings(referral, rules)
    decision = Decision(outcome="accept")
    if _excluded(referral, rules, decision):
        return decision
    if isinstance(rules, PrimaryCareRules):
        _route_primary_care(referral, rules, dialog_plus_in_force, decision)
    else:
        _route_talking_therapies(referral, rules, measures, decision)
    if decision.outcome == "accept" and decision.step:
        decision.team = rules.service.teams.by_step.get(decision.step) or rules.service.teams.by_step.get("duty")
    return decision


def known_findings(rules: PrimaryCareRules | TalkingTherapiesRules) -> set[str]:
    found = {k for k in rules.exclusions if k not in ("under-age", "outside-area")}
    if isinstance(rules, PrimaryCareRules):
        found |= set(rules.triage_coach_excluded)
    return found


def _check_findings(referral: PathwayReferral, rules: PrimaryCareRules | TalkingTherapiesRules) -> None:
    known = known_findings(rules)
    unknown = [f for f in referral.findings if f not in known]
    if unknown:
        raise GatewayInputError(
            Problem(
                Kind.VALUE,
                "ServiceRequest.reasonCode",
                f"findings not known to {rules.service.id}: {unknown[:5]}; known: {sorted(known)}",
            )
        )


def _age_years(referral: PathwayReferral) -> int | None:
    if referral.birth_date is None:
        return None
    on, born = london_date(referral.received), referral.birth_date
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


def _excluded(referral: PathwayReferral, rules: PrimaryCareRules | TalkingTherapiesRules, decision: Decision) -> bool:
    """Exclusions first (the most acute destination wins), then age and area. True when the referral is not booked."""
    years = _age_years(referral)
    applying: list[tuple[str, Exclusion]] = []
    for finding in referral.findings:
        exclusion = rules.exclusions.get(finding)
        if exclusion is None:
            continue
        if exclusion.ages and (years is None or not exclusion.ages[0] <= years <= exclusion.ages[1]):
            decision.because(
                exclusion.rule, f"finding {finding} applies only at ages {exclusion.ages[0]}-{exclusion.ages[1]}: not excluded"
            )
            continue
        applying.append((finding, exclusion))
    if applying:
        applying.sort(key=lambda pair: ROUTE_ORDER.index(pair[1].route))
        for finding, exclusion in applying:
            decision.because(exclusion.rule, f"finding {finding} excludes a booking: {exclusion.route}")
        _not_booked(applying[0][1], decision, rules, f"finding {applying[0][0]}")
        return True
    born, on = referral.birth_date, london_date(referral.received)
    minimum = rules.min_age
    if born is not None and not age_reached(born, on, minimum.years, minimum.months):
        rule = "PC-01" if isinstance(rules, PrimaryCareRules) else "TT-01"
        decision.because(rule, f"aged under {minimum} on the referral date {on.isoformat()} (born {born.isoformat()[:4]})")
        _not_booked(rules.exclusions["under-age"], decision, rules, "age")
        return True
    if born is not None:
        rule = "PC-01" if isinstance(rules, PrimaryCareRules) else "TT-01"
        decision.because(rule, f"aged at least {minimum} on the referral date {on.isoformat()}")
    if isinstance(rules, PrimaryCareRules):
        if referral.gp_practice not in rules.practices:
            decision.because("PC-01", f"GP practice {referral.gp_practice or '(none given)'} is not in the place's PCNs")
            _not_booked(rules.exclusions["outside-area"], decision, rules, "GP practice")
            return True
        decision.because("PC-01", f"registered with GP practice {referral.gp_practice}, in the place's PCNs")
    return False


def _not_booked(exclusion: Exclusion, decision: Decision, rules: PrimaryCareRules | TalkingTherapiesRules, why: str) -> None:
    """PC-13 no wrong door: every referral not booked goes somewhere named; the GP is told where TT-04 says so."""
    decision.outcome = "signpost" if exclusion.route == "signpost" else "redirect"
    decision.route = exclusion.route
    decision.where = exclusion.where
    decision.inform_gp = exclusion.inform_gp
    decision.because(exclusion.rule, f"not booked ({why}); {decision.outcome} to: {exclusion.where}")
    decision.because(
        "PC-13" if isinstance(rules, PrimaryCareRules) else "TT-07", "never a silent rejection: the destination is named and written to"
    )


def _route_primary_care(referral: PathwayReferral, rules: PrimaryCareRules, dialog_plus: bool, decision: Decision) -> None:
    requested = referral.requested_step or ("mhwbtc" if rules.triage_coach_in_place else "mhp")
    if requested == "pcmhh":
        if referral.source in ("gp", "care-navigator", "mhwbtc"):
            decision.because("PC-06", "step-ups from general practice are seen by a mental health practitioner (MHP) first")
            requested = "mhp"
        else:
            if referral.source == "mhp" and not dialog_plus:
                raise GatewayInputError(
                    Problem(
                        Kind.BUSINESS_RULE,
                        "ServiceRequest.supportingInfo",
                        "PC-06: a step up to the hub after an MHP appointment needs a completed DIALOG+ care plan "
                        "(care plan MHS008 and agreement MHS009, PC-09); none is recorded for this patient",
                    )
                )
            if referral.source == "mhp":
                decision.because("PC-06", "DIALOG+ care plan in force (MHS008 and MHS009 recorded, PC-09)")
            decision.step = "pcmhh"
            decision.clocks += ["pcmhh-screening", "pcmhh-4-week-wait"]
            decision.because("PC-06", "step up to the primary care mental health hub; the 4-week wait starts at referral")
            decision.because("PC-07", "the hub screens and allocates within 7 working days")
            return
    if requested == "mhwbtc":
        coach_age = rules.triage_coach_min_age
        born = referral.birth_date
        reasons = [f for f in referral.findings if f in rules.triage_coach_excluded]
        if not rules.triage_coach_in_place:
            reasons.append("no triage coach in this place")
        if born is not None and not age_reached(born, london_date(referral.received), coach_age.years, coach_age.months):
            reasons.append(f"aged under {coach_age}")
        if reasons:
            decision.because("PC-03", f"the triage coach does not take this referral ({', '.join(reasons)}): booked with the MHP")
            requested = "mhp"
        else:
            decision.because("PC-03", "triage coach (MHWBTC) appointment")
    if requested == "mhp":
        decision.because("PC-05", f"mental health practitioner appointments: 1 to {rules.mhp_session_cap} sessions")
        decision.because("PC-04", "first contact: PHQ-9 or GAD-7 and DIALOG in full, coded XaL0u")
    decision.step = requested


def _route_talking_therapies(
    referral: PathwayReferral, rules: TalkingTherapiesRules, measures: dict[str, MeasureFact], decision: Decision
) -> None:
    decision.because("TT-02", f"{'self' if referral.source == 'self' else 'professional'}-referral ({referral.source})")
    if referral.source == "self":
        agreed = "agrees" if referral.gp_contact_agreed else "does not agree"
        decision.because("TT-02", f"the person {agreed} to the GP being contacted (recorded; TT-14 letters follow it)")
    severities: list[tuple[str, str]] = []  # (stepping severity, the score it came from)
    for measure in ("phq-9", "gad-7"):
        fact = measures.get(measure)
        if fact is None or fact.band is None or fact.on_file is not None:
            continue
        rule = "TT-05" if measure == "phq-9" else "TT-06"
        stepping = rules.stepping_severity(measure, fact.score)
        if stepping is None:
            severity = rules.severity(measure, fact.band)
            decision.because(rule, f"{measure.upper()} {fact.score:g}: {fact.band} -> severity {severity}")
        else:  # TT-06 (b): the service's own table decides the step; the Observation keeps the published band
            severity = stepping
            decision.because(
                rule,
                f"{measure.upper()} {fact.score:g}: stepping severity {severity} (stepping_bands.{measure}; published band {fact.band})",
            )
        severities.append((severity, f"{measure.upper()} {fact.score:g}"))
    if referral.priority in _URGENT and referral.source == "self":
        decision.duty_screening = True
        within = format_iso_duration(rules.duty_screening_within)
        decision.because("TT-03", f"urgent self-referral: duty worker telephone screening within {within}")
    if not severities:
        decision.step = "screening"
        decision.because("TT-07", "no scored PHQ-9 or GAD-7 with the referral: screening decides step 2, step 3 or signposting")
    else:
        severity, source = max(severities, key=lambda pair: SEVERITY_ORDER.index(pair[0]))
        wsas, on_file = measures.get("wsas"), measures.get("wsas-on-file")
        columns = Columns(
            Column(severity, f"the worse of PHQ-9 and GAD-7: {source}"),
            functioning_column(
                rules,
                wsas.score if wsas and wsas.on_file is None else None,
                referral.functioning,
                (on_file.score, on_file.on_file) if on_file and on_file.score is not None and on_file.on_file else None,
            ),
            risk_column(referral.risk),
        )
        choice = choose_step(rules, columns)
        decision.columns, decision.decided_by, decision.senior_screening = columns, choice.decided_by, choice.senior_screening
        for line in choice.reasons:
            decision.because("TT-07", line)
        outcome = choice.outcome
        if outcome in ("step-2", "step-3"):
            decision.step = outcome
            if choice.senior_screening:
                decision.because("TT-07", f"{outcome} booked; screening by a senior clinician (a Task) before the initial assessment")
        else:
            route: Route = "signpost" if outcome == "signpost" else "secondary-care"
            where = rules.routes.get(route) or outcome
            decision.outcome = "signpost" if route == "signpost" else "redirect"
            decision.route, decision.where, decision.inform_gp = route, where, True
            decision.because("TT-07", f"not booked: {decision.outcome} to {where}; letter to the referrer, copy to the patient")
            return
    decision.clocks.append("tt-initial-assessment")
    decision.because("TT-08", "initial assessment within 28 days of referral (national target 42 days)")
