"""Emergency Services Mental Health Professional Line call (JSON, `mhpl-call/1`) -> `Referral` (CAS-06).

The MHCAS call handler records who called (police, ambulance, fire, ...), the professional's
details and the patient; the format is documented in docs/formats/mhpl-call.md.
"""

from __future__ import annotations

from pydantic import Field

from adapters.case_json import OpenModel, PatientBlock, RedFlagBlock, call_and_patient, extra_field_warnings, validate_case
from adapters.jsonparse import parse_json_object
from adapters.problems import ProblemList
from adapters.referral import Channel, Professional, RedFlagAnswer, Referral

__all__ = ["parse_mhpl_call", "MHPL_CALL_SYSTEM"]

MHPL_CALL_SYSTEM = "https://fhir.iap-gateway.org/Id/mhpl-call-id"


class _Caller(OpenModel):
    service: str = Field(min_length=2, max_length=40, pattern=r"^[a-z][a-z-]*$")
    name: str = Field(min_length=1)
    role: str | None = None
    staff_id: str | None = None
    phone: str | None = None


class _Call(OpenModel):
    format: str | None = Field(default=None, pattern=r"^mhpl-call/1$")
    call_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9.\-]+$")
    destination_dos_id: str = Field(min_length=1, max_length=32)
    call_time: str
    caller: _Caller
    patient: PatientBlock
    gp_practice_ods: str | None = Field(default=None, pattern=r"^[A-Z0-9]{3,10}$")
    red_flags: list[RedFlagBlock] = Field(default_factory=list)
    reason: str | None = None


def parse_mhpl_call(raw: bytes) -> Referral:
    """Parse one MHPL call. Raises GatewayInputError listing every problem found."""
    data = parse_json_object(raw, "$")
    call = validate_case(_Call, data)
    problems = ProblemList()
    call_time, demographics = call_and_patient(call.call_time, call.patient, problems)
    unused = extra_field_warnings(call, problems)
    if call_time is None:
        problems.raise_if_errors("parse")
    assert call_time is not None
    return Referral(
        source="mhpl",
        source_system=MHPL_CALL_SYSTEM,
        source_id=call.call_id,
        message_id=call.call_id,
        channel=Channel.MHPL,
        destination=call.destination_dos_id,
        destination_element="destination_dos_id",
        call_time=call_time,
        patient=demographics,
        gp_practice_ods=call.gp_practice_ods,
        red_flags=tuple(RedFlagAnswer(f.id, f.question, f.answer) for f in call.red_flags),
        caller_relationship=f"{call.caller.service} (emergency services professional)",
        professional=Professional(call.caller.service, call.caller.name, call.caller.role, call.caller.staff_id, call.caller.phone),
        free_text=call.reason,
        problems=tuple(problems.items),
        unused=unused,
    )
