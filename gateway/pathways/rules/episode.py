"""An episode of care's types and status for the pathway operations (pathway_steps dispatches them): the facts the
store gives an operation, its result (letters, work, transfer, flag), and the episode's status history."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from adapters.problems import GatewayInputError, Kind, Problem
from common.datetimes import parse_source_datetime, to_fhir_instant

__all__ = [
    "CONTACT_KINDS",
    "DIRECTIONS",
    "MISSABLE_IN_TREATMENT",
    "OPEN_EPISODE",
    "OUTCOMES",
    "EpisodeFacts",
    "Letter",
    "StepResult",
    "Work",
    "close_episode",
    "current_step",
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
