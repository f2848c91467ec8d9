"""CLEO case updates (JSON, `cleo-update/1`) -> a typed `CleoUpdate`: one event on one CAS case.

CLEO is where the CAS queue is worked; an update says what happened to a case there (a
consultation, a contact attempt, a CN review, a known-service step, a ratification). The
gateway applies it as the matching case operation, so CLEO updates obey the same rules
(CAS-07..CAS-14; never a downgrade, CAS-08). Format: docs/formats/cleo.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from adapters.case_json import OpenModel, extra_field_warnings, source_time, validate_case
from adapters.jsonparse import parse_json_object
from adapters.problems import Problem, ProblemList

__all__ = ["CleoUpdate", "parse_cleo_update", "EVENT_OPERATIONS"]

# CLEO event -> gateway case operation
EVENT_OPERATIONS = {
    "consultation": "end-assessment",
    "contact-attempt": "record-contact-attempt",
    "cn-review": "cn-review",
    "known-service": "known-service",
    "ratification": "ratify",
}


class _Update(OpenModel):
    format: Literal["cleo-update/1"] | None = None
    update_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9.\-]+$")
    case_ref: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9.\-]+$")
    event: Literal["consultation", "contact-attempt", "cn-review", "known-service", "ratification"]
    at: str
    by: str = Field(min_length=1)
    # consultation / ratification
    registered: bool | None = None
    notes: str | None = None
    physical_health_follow_up: bool | None = None
    # contact attempt
    kind: Literal["safety-call", "callback"] | None = None
    outcome: Literal["success", "failed", "new-concern"] | None = None
    # CN review
    suitability: Literal["registered", "unregistered"] | None = None
    clear_classification: bool | None = None
    priority: Literal["routine", "urgent", "asap", "stat"] | None = None
    timeframe: str | None = None
    # known service
    step: Literal["document", "agreed", "declined", "close"] | None = None
    provider: str | None = None


@dataclass(frozen=True)
class CleoUpdate:
    update_id: str
    case_ref: str  # the gateway's Task id, as CLEO holds it from the export
    operation: str
    at: datetime
    parameters: dict[str, Any]  # the operation's parameters (practitioner = who, in CLEO)
    problems: tuple[Problem, ...] = ()


def parse_cleo_update(raw: bytes) -> CleoUpdate:
    data = parse_json_object(raw, "$")
    update = validate_case(_Update, data)
    problems = ProblemList()
    at = source_time(update.at, "at", problems)
    problems.raise_if_errors("parse")
    assert at is not None
    extra_field_warnings(update, problems)
    fields = update.model_dump(exclude_none=True, exclude={"format", "update_id", "case_ref", "event", "at", "by"})
    parameters = {name.replace("_", "-"): value for name, value in fields.items() if name in type(update).model_fields}
    parameters["practitioner"] = update.by
    return CleoUpdate(update.update_id, update.case_ref, EVENT_OPERATIONS[update.event], at, parameters, tuple(problems.items))
