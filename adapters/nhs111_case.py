"""NHS 111 flat case JSON (as a 111 call system exports it) -> `Referral`.

The format is documented in docs/formats/nhs111-case.md. Everything is checked at
once and every problem is reported with its JSON path; unknown fields are kept as
warnings (never dropped silently).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from adapters.case_json import OpenModel, PatientBlock, RedFlagBlock, call_and_patient, extra_field_warnings, validate_case
from adapters.jsonparse import parse_json_object
from adapters.problems import GatewayInputError, Kind, Problem, ProblemList
from adapters.referral import (
    Channel,
    PathwaysOutcome,
    RedFlagAnswer,
    Referral,
    normalise_dx,
)

__all__ = ["parse_nhs111_case", "CASE_ID_SYSTEM", "FORMAT_NAME"]

FORMAT_NAME = "nhs111-case/1"
CASE_ID_SYSTEM = "https://fhir.iap-gateway.org/Id/nhs111-case-id"


class _Pathways(OpenModel):
    dx: str | None = None
    dx_display: str | None = None
    symptom_group: str | None = None
    symptom_discriminator: str | None = None
    pathway: str | None = None


class _Caller(OpenModel):
    relationship: str | None = None


class _Case(OpenModel):
    format: Literal["nhs111-case/1"] | None = None
    case_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9.\-]+$")
    channel: Literal["111-option-1", "111-option-2", "111-online", "third-party", "bsl-interpreter"]
    destination_dos_id: str = Field(min_length=1, max_length=32)
    call_time: str
    patient: PatientBlock
    gp_practice_ods: str | None = Field(default=None, pattern=r"^[A-Z0-9]{3,10}$")
    pathways: _Pathways | None = None
    red_flags: list[RedFlagBlock] = Field(default_factory=list)
    caller: _Caller | None = None
    free_text: str | None = None


def parse_nhs111_case(raw: bytes) -> Referral:
    """Parse one flat 111 case. Raises GatewayInputError listing every problem found."""
    data = parse_json_object(raw, "$")
    if "resourceType" in data:
        raise GatewayInputError(
            Problem(
                Kind.STRUCTURE,
                "resourceType",
                f"this endpoint takes the flat NHS 111 case JSON, not a FHIR {data['resourceType']!s:.40}; "
                "send FHIR message Bundles to POST /fhir/$process-message",
            )
        )
    case = validate_case(_Case, data)
    problems = ProblemList()
    call_time, demographics = call_and_patient(case.call_time, case.patient, problems)

    channel = Channel(case.channel)
    pathways = None
    if case.pathways is not None:
        dx = None
        if case.pathways.dx:
            dx = normalise_dx(case.pathways.dx)
            if dx is None:
                problems.error(Kind.VALUE, "pathways.dx", f"{case.pathways.dx!r} is not an NHS Pathways Dx code (Dx + digits)")
        pathways = PathwaysOutcome(
            dx=dx,
            dx_display=case.pathways.dx_display,
            dx_element="pathways.dx",
            symptom_group=case.pathways.symptom_group,
            symptom_discriminator=case.pathways.symptom_discriminator,
            pathway=case.pathways.pathway,
        )
    if channel.pathways_assessed and (pathways is None or not case.pathways or not case.pathways.dx):
        problems.error(
            Kind.REQUIRED,
            "pathways.dx",
            f"a {channel.value} case has been through NHS Pathways and must carry its disposition (Dx) code (CAS-05)",
        )

    unused = extra_field_warnings(case, problems)
    if call_time is None:
        problems.raise_if_errors("parse")
    assert call_time is not None

    return Referral(
        source="nhs111-case",
        source_system=CASE_ID_SYSTEM,
        source_id=case.case_id,
        message_id=case.case_id,
        channel=channel,
        destination=case.destination_dos_id,
        destination_element="destination_dos_id",
        call_time=call_time,
        patient=demographics,
        gp_practice_ods=case.gp_practice_ods,
        pathways=pathways,
        red_flags=tuple(RedFlagAnswer(f.id, f.question, f.answer) for f in case.red_flags),
        caller_relationship=case.caller.relationship if case.caller else None,
        free_text=case.free_text,
        problems=tuple(problems.items),
        unused=unused,
    )
