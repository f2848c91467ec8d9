"""Rule files: their schema, validated at load time, and the registry that routes by destination.

A rule file holds every local policy value for one service (domain-rules.md "(config)").
Loading refuses a bad file with the file name and the failing field, so a bad rule
change stops the gateway at start-up rather than misrouting a patient.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from common.datetimes import LONDON, is_england_bank_holiday, parse_iso_duration

__all__ = ["ServiceRules", "Disposition", "RuleRegistry", "RuleFileError", "load_rules", "read_rule_file", "DEFAULT_RULES_DIR", "Duration"]

DEFAULT_RULES_DIR = Path(__file__).parent / "services"
T = TypeVar("T")
_DX_KEY = re.compile(r"^Dx\d{2,5}$")


def _to_duration(value: object) -> object:
    return parse_iso_duration(value) if isinstance(value, str) else value


Duration = Annotated[timedelta, BeforeValidator(_to_duration)]  # rule files write ISO 8601 durations (PT6H)


class RuleFileError(Exception):
    """A rule file is missing, unreadable or breaks the schema."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Disposition(_Strict):
    """CAS-05: one NHS Pathways disposition and the callback window its wording states."""

    within: Duration | None = None
    within_working_days: int | None = Field(default=None, ge=1, le=20)
    wording: str = Field(min_length=3)
    source: str = Field(min_length=3)

    @model_validator(mode="after")
    def _one_window(self) -> Disposition:
        if (self.within is None) == (self.within_working_days is None):
            raise ValueError("give exactly one of 'within' (ISO duration) or 'within_working_days'")
        if self.within is not None and self.within <= timedelta(0):
            raise ValueError("'within' must be positive")
        return self


class ServiceContact(_Strict):
    """How a letter's reader reaches the service (letter head and footer, issue 34): no letter without one."""

    telephone: str = Field(pattern=r"^\+?[0-9][0-9 ]{6,18}[0-9]$")
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    address: list[str] = Field(min_length=1, max_length=6)  # postal address lines, postcode last


class ServiceInfo(_Strict):
    id: str = Field(pattern=r"^[a-z0-9-]{2,32}$")
    name: str
    provider_ods: str = Field(pattern=r"^[A-Z0-9]{3,10}$")
    dos_service_ids: list[str] = Field(min_length=1)
    contact: ServiceContact


class FlagMatch(_Strict):
    system: str
    code: str
    display: str


class RedFlagRules(_Strict):
    classification: Literal["urgent-cn-review"]
    within: Duration  # CAS-04: a red-flag case's window (handbook: "added to the CAS queue as a 6-hour priority")
    # CAS-04 with CAS-05: a red flag on a timed Pathways disposition gets the earlier of the two windows, or keeps the
    # disposition's (issue 33; local decision, default the earlier)
    on_timed_disposition: Literal["earlier", "disposition"] = "earlier"
    bars_flags: list[FlagMatch] = Field(default_factory=list)


class PriorityBand(_Strict):
    up_to: Duration | None = None
    priority: Literal["routine", "urgent", "asap", "stat"]


class BreachStatusRules(_Strict):
    """CAS-09 thresholds: amber when this close to breaching, black when this long breached."""

    amber_within: Duration
    black_after: Duration


class SafetyCallRules(_Strict):
    every: Duration


class FailedContactRules(_Strict):
    attempts: int = Field(ge=1, le=10)


class MhplRules(_Strict):
    """CAS-06: callback timeframe by the calling emergency service."""

    timeframes: dict[str, Duration] = Field(min_length=1)
    # a caller service with no timeframe still gets a case (handbook: "the call handlers will create a case"):
    # the shortest of `timeframes`, with this classification (issue 33; local decision)
    unknown_service_classification: Literal["urgent-cn-review"]


class InHours(_Strict):
    weekdays: list[int] = Field(min_length=1)  # ISO weekday numbers, Monday = 1
    start: time
    end: time

    def covers(self, moment: datetime) -> bool:
        """Whether `moment` (any zone) is in hours in Europe/London; England bank holidays are out of hours."""
        local = moment.astimezone(LONDON)
        if is_england_bank_holiday(local.date()):
            return False
        return local.isoweekday() in self.weekdays and self.start <= local.time() < self.end


class SpecialistDeskRules(_Strict):
    """CAS-15: Mental Health Specialist Desk calls (out of hours: a case; in hours: transferred to the GP, no case)."""

    caller_relationship: str
    in_hours: InHours


class RiskThresholds(_Strict):
    breached_at_least: int = Field(ge=0)
    unallocated_urgent_at_least: int = Field(ge=0)
    extreme_age_waiting_at_least: int | None = Field(default=None, ge=0)


class QueueRiskRules(_Strict):
    """CAS-16: evidence thresholds for the suggested queue risk level."""

    extreme_age: dict[Literal["under", "over"], int]
    worsening_within: Duration
    high: RiskThresholds
    medium: RiskThresholds


class ServiceRules(_Strict):
    schema_: Literal["cas-queue/1"] = Field(alias="schema")
    version: str = Field(min_length=1)
    service: ServiceInfo
    call_handler_timeframe: Duration
    red_flags: RedFlagRules
    breach_status: BreachStatusRules
    safety_calls: SafetyCallRules
    failed_contacts: FailedContactRules
    mhpl: MhplRules
    specialist_desk: SpecialistDeskRules
    queue_risk: QueueRiskRules
    task_priority: list[PriorityBand] = Field(min_length=1)
    dispositions: dict[str, Disposition]

    @field_validator("dispositions")
    @classmethod
    def _dx_keys(cls, value: dict[str, Disposition]) -> dict[str, Disposition]:
        bad = [key for key in value if not _DX_KEY.match(key)]
        if bad:
            raise ValueError(f"disposition keys must be written Dx + digits (e.g. Dx02): {bad}")
        return value

    @field_validator("task_priority")
    @classmethod
    def _bands(cls, bands: list[PriorityBand]) -> list[PriorityBand]:
        limits = [b.up_to for b in bands[:-1]]
        if any(limit is None for limit in limits) or bands[-1].up_to is not None:
            raise ValueError("every band but the last needs 'up_to'; the last band has none")
        if limits != sorted(limits):  # type: ignore[type-var]
            raise ValueError("bands must be in increasing 'up_to' order")
        return bands

    @property
    def label(self) -> str:
        return f"{self.service.id} cas-queue {self.version}"

    def task_priority_for(self, timeframe: timedelta) -> str:
        for band in self.task_priority:
            if band.up_to is None or timeframe <= band.up_to:
                return band.priority
        raise AssertionError("validated: the last band is open")


class RuleRegistry:
    """All services' rules, and routing by destination DoS service id."""

    def __init__(self, services: list[ServiceRules]) -> None:
        self.services = {s.service.id: s for s in services}
        self._by_destination = self._destinations(services)
        self.history: Any = None  # gateway.rules.versions.RuleVersions, once the gateway has a store (issue 37)

    @staticmethod
    def _destinations(services: list[ServiceRules]) -> dict[str, ServiceRules]:
        by_destination: dict[str, ServiceRules] = {}
        for rules in services:
            for dos_id in rules.service.dos_service_ids:
                other = by_destination.get(dos_id)
                if other is not None:
                    raise RuleFileError(f"DoS service id {dos_id} is claimed by both {other.service.id} and {rules.service.id}")
                by_destination[dos_id] = rules
        return by_destination

    def for_destination(self, dos_service_id: str) -> ServiceRules | None:
        return self._by_destination.get(dos_service_id)

    def replace(self, rules: ServiceRules) -> None:
        """Make `rules` its service's live version in this running gateway (an activation, issue 37); refused with
        nothing changed if its DoS ids clash with another service's. Each swap is one assignment: readers see the old
        version or the new, never a mix."""
        services = {**self.services, rules.service.id: rules}
        by_destination = self._destinations(list(services.values()))
        self.services, self._by_destination = services, by_destination


def load_rules(directory: Path = DEFAULT_RULES_DIR) -> RuleRegistry:
    """Load and validate every `*.yaml` rule file in `directory`."""
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise RuleFileError(f"no rule files (*.yaml) in {directory}")
    return RuleRegistry([read_rule_file(path, ServiceRules.model_validate) for path in files])


def read_rule_file(path: Path, validate: Callable[[Any], T]) -> T:
    """One YAML rule file through its schema; a bad file names itself and every failing field."""
    try:
        rules = validate(_read_yaml(path, ()))
    except (OSError, yaml.YAMLError) as exc:
        raise RuleFileError(f"{path.name}: cannot read: {exc}") from None
    except ValidationError as exc:
        details = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise RuleFileError(f"{path.name}: {details}") from None
    service_id = rules.service.id  # type: ignore[attr-defined]
    if service_id != path.stem:
        raise RuleFileError(f"{path.name}: service.id {service_id!r} must match the file name")
    return rules


def _read_yaml(path: Path, seen: tuple[Path, ...]) -> Any:
    """A rule file's data; `extends: NAME` deep-merges it over `NAME.base.yaml` beside it (shared values kept once)."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "extends" not in data:
        return data
    base = path.with_name(f"{data.pop('extends')}.base.yaml")
    if base in seen:
        raise RuleFileError(f"{path.name}: 'extends' loops through {base.name}")
    return _merge(_read_yaml(base, (*seen, path)), data)


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: _merge(base[k], v) if k in base else v for k, v in over.items()}}
    return over
