"""Pieces shared by the flat JSON case formats (NHS 111 case, MHPL call): patient block, red flags, error paths."""

from __future__ import annotations

import typing
from datetime import datetime
from functools import cache
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adapters.problems import GatewayInputError, Kind, Problem, ProblemList
from adapters.referral import Demographics, check_nhs_number
from common.datetimes import OffsetMissing, parse_source_date, parse_source_datetime

__all__ = [
    "OpenModel",
    "PatientBlock",
    "RedFlagBlock",
    "demographics_of",
    "extra_field_warnings",
    "problem_from_pydantic",
    "validate_case",
    "source_time",
    "call_and_patient",
    "Text",
]

M = TypeVar("M", bound=BaseModel)
# A list item that becomes a FHIR string: FHIR has no empty strings, so "" (or only spaces, stripped) is refused by
# name (422). An empty single value is left out of the FHIR, as it always was.
Text = Annotated[str, Field(min_length=1)]


def validate_case(model: type[M], data: dict[str, Any]) -> M:
    """The JSON object as `model`, or GatewayInputError naming every failing field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise GatewayInputError([problem_from_pydantic(err) for err in exc.errors()]) from None


def source_time(value: str, element: str, problems: ProblemList) -> datetime | None:
    """A sender's date-time (offset required), or None with the problem recorded against `element`."""
    try:
        return parse_source_datetime(value)
    except OffsetMissing as exc:
        problems.error(Kind.VALUE, element, f"dates must carry a timezone: {exc}")
    except ValueError as exc:
        problems.error(Kind.VALUE, element, str(exc))
    return None


def call_and_patient(call_time: str, patient: PatientBlock, problems: ProblemList) -> tuple[datetime | None, Demographics]:
    """The call time and the patient of a case: the parts every case format shares, checked the same way."""
    when = source_time(call_time, "call_time", problems)
    return when, demographics_of(patient, problems)


class OpenModel(BaseModel):
    model_config = ConfigDict(extra="allow", str_strip_whitespace=True)


class PatientBlock(OpenModel):
    nhs_number: str
    family: str | None = None
    given: list[Text] = Field(default_factory=list)
    birth_date: str | None = None
    gender: Literal["male", "female", "other", "unknown"] | None = None
    address_lines: list[Text] = Field(default_factory=list)
    city: str | None = None
    postcode: str | None = None
    phone: str | None = None


class RedFlagBlock(OpenModel):
    id: str = Field(min_length=1)
    question: str = Field(min_length=1)
    answer: bool


def demographics_of(patient: PatientBlock, problems: ProblemList) -> Demographics:
    """The patient block as `Demographics`: the NHS number normalised when valid, else reported against
    patient.nhs_number (and kept as sent: the case is refused)."""
    nhs, reason = check_nhs_number(patient.nhs_number)
    if reason:
        problems.error(Kind.VALUE, "patient.nhs_number", reason)
    birth_date = None
    if patient.birth_date:
        try:
            birth_date = parse_source_date(patient.birth_date)
        except ValueError as exc:
            problems.error(Kind.VALUE, "patient.birth_date", str(exc))
    return Demographics(
        nhs_number=nhs or patient.nhs_number,
        family=patient.family,
        given=tuple(patient.given),
        birth_date=birth_date,
        gender=patient.gender,
        address_lines=tuple(patient.address_lines),
        city=patient.city,
        postcode=patient.postcode,
        phone=patient.phone,
    )


def extra_field_warnings(model: BaseModel, problems: ProblemList) -> tuple[str, ...]:
    """Fields the format does not know: warned about and kept in the raw message, never dropped silently."""
    unused = tuple(_extra_paths(model))
    for path in unused:
        problems.warning(Kind.NOT_SUPPORTED, path, "field not recognised by this format; kept in the raw message only")
    return unused


def problem_from_pydantic(err: Any) -> Problem:
    path = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in err["loc"]).replace(".[", "[")
    kind = Kind.REQUIRED if err["type"] == "missing" else Kind.VALUE
    message = err["msg"]
    if err["type"] == "literal_error":
        message = f"must be one of: {err['ctx']['expected']}"
    return Problem(kind, path or "$", message)


def _extra_paths(model: BaseModel, prefix: str = "") -> list[str]:
    paths = [f"{prefix}{key}" for key in (model.model_extra or {})]
    for name in _nested_fields(type(model)):
        value = getattr(model, name)
        items = value if isinstance(value, list) else [value]
        for index, item in enumerate(items):
            if isinstance(item, BaseModel):
                suffix = f"[{index}]" if isinstance(value, list) else ""
                paths += _extra_paths(item, f"{prefix}{name}{suffix}.")
    return paths


@cache
def _nested_fields(model: type[BaseModel]) -> tuple[str, ...]:
    """The fields of `model` that can hold a model, so can hold unknown fields below them (the others cannot)."""
    return tuple(name for name, info in model.model_fields.items() if _holds_model(info.annotation))


def _holds_model(annotation: Any) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    return any(_holds_model(arg) for arg in typing.get_args(annotation))
