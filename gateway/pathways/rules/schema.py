"""Pathway rule files (schema `pathway/1`): one file per locality of a primary care or Talking Therapies service.

Every value a service sets locally (age limits, session caps, day counts, thresholds, the
exclusion table, step allocation by PHQ-9/GAD-7 band) lives in `gateway/pathways/rules/pathways/*.yaml`;
the code in `pathway_routing.py`, `pathway_steps.py` and `pathway_clocks.py` only reads it.
Loading refuses a bad file naming the file and the failing field, so a bad rule change stops
the gateway at start-up. The version that decided each outcome is recorded with it
(`ServicePathway.label`, written into every decision's Provenance.policy).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from gateway.cas.rules.schema import Duration, RuleFileError, ServiceContact, read_rule_file

__all__ = [
    "Age",
    "ClockRule",
    "Exclusion",
    "PathwayRegistry",
    "PrimaryCareRules",
    "ServicePathway",
    "TalkingTherapiesRules",
    "load_pathways",
    "DEFAULT_PATHWAYS_DIR",
    "ROUTES",
    "Route",
]

DEFAULT_PATHWAYS_DIR = Path(__file__).parent / "pathways"
ROUTES = ("crisis", "secondary-care", "talking-therapies", "primary-care", "access-and-assessment", "signpost")
Route = Literal["crisis", "secondary-care", "talking-therapies", "primary-care", "access-and-assessment", "signpost"]
RULE_ID = r"^(PC|TT)-\d{2}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Age(_Strict):
    """An age limit in whole years and months (PC-01: 17 years 6 months)."""

    years: int = Field(ge=0, le=120)
    months: int = Field(default=0, ge=0, le=11)

    def __str__(self) -> str:
        return f"{self.years}y{self.months}m" if self.months else f"{self.years}y"


class Exclusion(_Strict):
    """A finding that stops a booking, and where the referral goes instead (never a silent rejection, PC-13)."""

    rule: str = Field(pattern=RULE_ID)
    route: Route
    where: str = Field(min_length=3)  # the named destination, in the words the letter uses
    inform_gp: bool = False  # TT-04: "the relevant GP must be informed"
    ages: tuple[int, int] | None = None  # applies only to this inclusive age range in years (TT-04: 16-17)


class ClockRule(_Strict):
    """A waiting-time clock: due after a duration, after working days (England bank holidays skipped) or after months."""

    rule: str = Field(pattern=RULE_ID)
    title: str = Field(min_length=3)
    after: Duration | None = None
    after_working_days: int | None = Field(default=None, ge=1, le=60)
    after_months: int | None = Field(default=None, ge=1, le=24)
    report_after: dict[str, Duration] = Field(default_factory=dict)  # further named lines for reporting (TT-08 national 42 days)
    on_due: Literal["breach", "reminder"]  # breach: the clock should have stopped; reminder: something is due now

    @model_validator(mode="after")
    def _one_window(self) -> ClockRule:
        given = [v for v in (self.after, self.after_working_days, self.after_months) if v is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'after' (ISO duration), 'after_working_days' or 'after_months'")
        return self


class Teams(_Strict):
    locality: str = Field(min_length=2)
    by_step: dict[str, str] = Field(min_length=1)


class ServiceInfo(_Strict):
    id: str = Field(pattern=r"^[a-z0-9-]{2,32}$")
    name: str = Field(min_length=3)
    provider_ods: str = Field(pattern=r"^[A-Z0-9]{3,10}$")
    teams: Teams
    contact: ServiceContact  # letter head and footer (issue 34)


class _Common(_Strict):
    schema_: Literal["pathway/1"] = Field(alias="schema")
    version: str = Field(min_length=1)
    service: ServiceInfo
    exclusions: dict[str, Exclusion] = Field(min_length=1)
    routes: dict[Route, str]  # the named destination of each redirect route in this locality
    clocks: dict[str, ClockRule]

    @model_validator(mode="after")
    def _routes_named(self) -> _Common:
        missing = sorted({e.route for e in self.exclusions.values()} - set(self.routes))
        if missing:
            raise ValueError(f"routes used by exclusions have no destination in 'routes': {missing}")
        if "under-age" not in self.exclusions:
            raise ValueError("exclusions needs 'under-age' (where a referral under the minimum age goes)")
        return self

    @property
    def label(self) -> str:
        return f"{self.service.id} pathway {self.version}"

    @property
    def policy_uri(self) -> str:
        return f"https://fhir.iap-gateway.org/rules/{self.service.id}/{self.version}"


class PrimaryCareRules(_Common):
    """RDaSH primary care mental health service (PC-01..PC-14)."""

    kind: Literal["primary-care"]
    min_age: Age  # PC-01
    triage_coach_min_age: Age  # PC-03
    triage_coach_excluded: list[str]  # PC-03: findings the MHWBTC does not take
    triage_coach_in_place: bool
    practices: list[str] = Field(min_length=1)  # PC-01: GP practices (ODS) of the place's PCNs
    mhp_session_cap: int = Field(ge=1, le=20)  # PC-05
    dialog_improvement: float = Field(gt=0, le=6)  # PC-11
    min_outcome_measures: int = Field(ge=1, le=3)  # PC-14: of baseline_measures, completed before leaving the service
    baseline_measures: list[str] = Field(min_length=1)  # PC-08 and PC-14: measure ids (GBO, DIALOG, ReQoL-10)
    measures_before_referral: Duration  # PC-08/PC-14: a measure scored this long before the referral still counts

    @model_validator(mode="after")
    def _pc_clocks(self) -> PrimaryCareRules:
        if self.min_outcome_measures > len(self.baseline_measures):
            raise ValueError(f"min_outcome_measures ({self.min_outcome_measures}) is more than baseline_measures lists")
        _need_clocks(self.clocks, ("pcmhh-4-week-wait", "pcmhh-screening", "pcmhh-caseload-review", "keeping-well-call"))
        _need_steps(self.service.teams, ("mhwbtc", "mhp", "pcmhh"))
        if "outside-area" not in self.exclusions:
            raise ValueError("exclusions needs 'outside-area' (where a patient of another PCN's practice goes)")
        return self


class SessionCap(_Strict):
    """TT-12: contacts allowed at a step, and the most with a supervisor's agreement."""

    standard: int = Field(ge=1, le=40)
    with_supervisor: int = Field(ge=1, le=60)

    @model_validator(mode="after")
    def _order(self) -> SessionCap:
        if self.with_supervisor < self.standard:
            raise ValueError("'with_supervisor' must be at least 'standard'")
        return self


Severity = Literal["none", "mild", "moderate", "moderately-severe", "severe"]
Functioning = Literal["relatively-unaffected", "impeded", "poor"]
Risk = Literal["low", "no-current-intent", "high"]


class Allocation(_Strict):
    """TT-07: one row of the step table (policy 9), whose rows combine three columns: severity (the worse of the
    PHQ-9 and GAD-7 stepping severities), functioning and risk. A row without `functioning` / `risk` is the severity's
    default; a row with them applies only when every column it names is known and in its list. `if_unknown` says what
    a row does when a column it names is unknown: `default` (the severity's default row decides) or `senior-screening`
    (the default row decides, and a senior clinician screens the referral: never an automatic redirect)."""

    severity: Severity
    functioning: list[Functioning] | None = Field(default=None, min_length=1)
    risk: list[Risk] | None = Field(default=None, min_length=1)
    outcome: Literal["step-2", "step-3", "secondary-care", "signpost"]
    if_unknown: Literal["default", "senior-screening"] = "default"

    @property
    def conditional(self) -> bool:
        return self.functioning is not None or self.risk is not None


class FunctioningBand(_Strict):
    """TT-07: the functioning column from a WSAS total (scores up to `up_to` inclusive)."""

    up_to: int = Field(ge=0, le=40)
    functioning: Functioning


class SteppingBand(_Strict):
    """TT-06 (b): one row of the service's own score bands for step allocation (scores up to `up_to` inclusive)."""

    up_to: int = Field(ge=0)
    severity: Literal["none", "mild", "moderate", "moderately-severe", "severe"]


class TreatmentTarget(_Strict):
    """TT-08: this share of referrals that have a course of treatment start it within this time of referral."""

    within: Duration
    share: float = Field(gt=0, le=1)

    @model_validator(mode="after")
    def _whole_days(self) -> TreatmentTarget:
        if self.within.days < 1 or self.within != timedelta(days=self.within.days):
            raise ValueError(f"treatment_targets: within must be a whole number of days (P42D), not {self.within}")
        return self


class WaitLetters(_Strict):
    """TT-18: letters when the wait to a first appointment exceeds the target (policy 4.1.5); local decisions."""

    estimate_from: Duration  # the estimate: median wait of those who entered treatment within this period before now
    round_to_days: int = Field(ge=1, le=28)  # estimates are rounded up to this step: a letter per change, not per day
    helplines: list[str] = Field(min_length=1)  # "emergency helplines"
    alternative_support: list[str] = Field(min_length=1)  # "alternative sources of support"


class TalkingTherapiesRules(_Common):
    """North Essex NHS Talking Therapies (TT-01..TT-16)."""

    kind: Literal["talking-therapies"]
    min_age: Age  # TT-01 local variant
    severity_bands: dict[str, dict[str, str]]  # TT-05/TT-06: measure id -> scorer band code -> severity
    step_allocation: list[Allocation] = Field(min_length=5)  # TT-07: severity, functioning, risk
    functioning_bands: list[FunctioningBand] = Field(min_length=1)  # TT-07: WSAS total -> functioning column
    functioning_on_file_within: Duration  # TT-07: a WSAS on file counts when completed this long before the referral
    # TT-06 (b): the service's own bands for stepping, by score (the Observation keeps the published bands)
    stepping_bands: dict[Literal["phq-9", "gad-7"], list[SteppingBand]] = Field(default_factory=dict)
    session_caps: dict[Literal["step-2", "step-3"], SessionCap]  # TT-12
    dna_discharge_in_treatment: int = Field(ge=1, le=5)  # TT-13
    assessment_booking_attempts: int = Field(ge=1, le=10)  # TT-17: failed attempts to arrange the initial assessment before closing
    wait_letters: WaitLetters  # TT-18
    duty_screening_within: Duration  # TT-03 (local decision)
    treatment_targets: list[TreatmentTarget] = Field(min_length=1)  # TT-08 referral to first treatment
    tail_share: float = Field(gt=0, lt=1)  # TT-09: no more than 10% wait over the tail

    @model_validator(mode="after")
    def _tt_checks(self) -> TalkingTherapiesRules:
        _need_clocks(self.clocks, ("tt-initial-assessment", "tt-second-session", "tt-kit-call", "tt-dna-contact"))
        _need_steps(self.service.teams, ("duty", "step-2", "step-3"))
        defaults = [a.severity for a in self.step_allocation if not a.conditional]
        if len(set(defaults)) != len(defaults) or len(set(defaults)) != 5:
            raise ValueError(
                "step_allocation needs exactly one row without functioning/risk per severity "
                "(none, mild, moderate, moderately-severe, severe)"
            )
        if [b.up_to for b in self.functioning_bands] != sorted({b.up_to for b in self.functioning_bands}):
            raise ValueError("functioning_bands: up_to must rise from row to row")
        for measure in ("phq-9", "gad-7"):
            if measure not in self.severity_bands:
                raise ValueError(f"severity_bands needs {measure}")
        return self

    def severity(self, measure: str, band: str) -> str:
        return self.severity_bands[measure][band]

    def stepping_severity(self, measure: str, score: float | None) -> str | None:
        """TT-06 (b): the severity for stepping from the service's own bands (None: no such bands, or no score)."""
        bands = self.stepping_bands.get(measure)  # type: ignore[call-overload]
        if not bands or score is None:
            return None
        return next((b.severity for b in bands if score <= b.up_to), bands[-1].severity)

    def allocation(self, severity: str) -> str:
        """The severity's default row (no functioning or risk named)."""
        return next(a.outcome for a in self.step_allocation if a.severity == severity and not a.conditional)

    def functioning_from_wsas(self, total: float) -> str:
        """TT-07: the functioning column for a WSAS total (functioning_bands)."""
        return next((b.functioning for b in self.functioning_bands if total <= b.up_to), self.functioning_bands[-1].functioning)


def _need_clocks(clocks: dict[str, ClockRule], names: tuple[str, ...]) -> None:
    missing = [n for n in names if n not in clocks]
    if missing:
        raise ValueError(f"clocks missing: {missing}")


def _need_steps(teams: Teams, steps: tuple[str, ...]) -> None:
    missing = [s for s in steps if s not in teams.by_step]
    if missing:
        raise ValueError(f"service.teams.by_step missing: {missing}")


ServicePathway = Annotated[PrimaryCareRules | TalkingTherapiesRules, Field(discriminator="kind")]
_ADAPTER: TypeAdapter[PrimaryCareRules | TalkingTherapiesRules] = TypeAdapter(ServicePathway)


class PathwayRegistry:
    """Every locality's pathway rules by service id."""

    def __init__(self, services: list[PrimaryCareRules | TalkingTherapiesRules]) -> None:
        self.services = {s.service.id: s for s in services}

    def get(self, service_id: str) -> PrimaryCareRules | TalkingTherapiesRules | None:
        return self.services.get(service_id)


def load_pathways(directory: Path = DEFAULT_PATHWAYS_DIR) -> PathwayRegistry:
    """Load and validate every `*.yaml` pathway rule file in `directory`."""
    files = sorted(p for p in directory.glob("*.yaml") if not p.name.endswith(".base.yaml"))
    if not files:
        raise RuleFileError(f"no pathway rule files (*.yaml) in {directory}")
    return PathwayRegistry([read_rule_file(path, _ADAPTER.validate_python) for path in files])
