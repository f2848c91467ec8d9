"""PID as UK senders send it: the NHS number in any usual PID-3 placement, local numbers, demographics.

NHS number placements (NHS England ITK HL7 v2 specifications and trust PAS feeds): CX.4 assigning
authority `NHS` (any case) or the NHS OID 2.16.840.1.113883.2.1.4.1 (as the namespace or the HD's
universal id, `NHS&2.16.840.1.113883.2.1.4.1&ISO`), or CX.5 identifier type `NH` / `NHS`. Its check
digit is checked wherever it is. Its verification status is the NHS Number Status Indicator (01-08)
in PID-32. Every other PID-3 repetition is a local number kept with its assigning authority. No FHIR here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from adapters.hl7v2_fields import component, field, subcomponent, unescape
from adapters.referral import Demographics, check_nhs_number

__all__ = ["LocalNumber", "PidReading", "read_pid", "NHS_OID", "PidProblem"]

NHS_OID = "2.16.840.1.113883.2.1.4.1"
_STATUS = re.compile(r"^0[1-8]$")
_SEX = {"M": "male", "F": "female", "O": "other", "U": "unknown", "A": "other", "N": "unknown"}


@dataclass(frozen=True)
class LocalNumber:
    """A PID-3 repetition that is not the NHS number: the sender's number for the patient."""

    value: str
    authority: str  # CX.4 namespace id (or its universal id when the namespace is empty)
    type_code: str  # CX.5 (PI, MR, ...)


@dataclass(frozen=True)
class PidReading:
    patient: Demographics  # nhs_number "" when the sender gave none
    local_numbers: tuple[LocalNumber, ...]
    nhs_status: str | None  # NHS Number Status Indicator 01-08, when sent


class PidProblem(ValueError):
    """PID content that cannot be taken: the field (3, 7) and the HL7 0357 code (101 missing, 102 bad value)."""

    def __init__(self, field_no: int, code: int, text: str) -> None:
        super().__init__(text)
        self.field_no, self.code, self.text = field_no, code, text


def _is_nhs(cx: str, placement: str) -> bool:
    authority = component(cx, 4)
    namespace, universal = subcomponent(authority, 1).strip(), subcomponent(authority, 2).strip()
    by_authority = namespace.upper() == "NHS" or NHS_OID in (namespace, universal)
    by_type = component(cx, 5).strip().upper() in ("NH", "NHS")
    return {"authority": by_authority, "type-code": by_type}.get(placement, by_authority or by_type)


def read_pid(pid: str, placement: str = "any", status_field: str = "PID-32", birth: date | None = None) -> PidReading:
    """The patient of a PID segment; `placement` (any, authority, type-code) is where the sender puts the NHS number.

    Raises PidProblem: a wrong NHS number (102), two different NHS numbers (102), or no identifier at all (101).
    `birth` is PID-7 as the caller read it (times are read by the parser, in the sender's zone).
    """
    nhs: str | None = None
    locals_: list[LocalNumber] = []
    for cx in field(pid, 3).split("~"):
        value = unescape(component(cx, 1)).strip()
        if not value:
            continue
        if _is_nhs(cx, placement):
            number, reason = check_nhs_number(value)
            if reason:
                raise PidProblem(3, 102, reason)
            if nhs is not None and number != nhs:
                raise PidProblem(3, 102, "two different NHS numbers")
            nhs = number
            continue
        authority = component(cx, 4)
        locals_.append(
            LocalNumber(value, unescape(subcomponent(authority, 1) or subcomponent(authority, 2)).strip(), component(cx, 5).strip())
        )
    if nhs is None and not locals_:
        raise PidProblem(3, 101, "needs the NHS number (CX.4 NHS or CX.5 NH/NHS) or a local number")
    status = component(field(pid, 32).split("~")[0], 1).strip() if status_field == "PID-32" else ""
    name = field(pid, 5).split("~")[0]
    address = field(pid, 11).split("~")[0]

    def text(value: str) -> str | None:
        return unescape(value).strip() or None

    patient = Demographics(
        nhs_number=nhs or "",
        family=text(subcomponent(component(name, 1), 1)),
        given=tuple(g for g in (text(component(name, 2)), text(component(name, 3))) if g),
        prefix=tuple(p for p in (text(component(name, 5)),) if p),
        birth_date=birth,
        gender=_SEX.get(field(pid, 8).split("^")[0].strip().upper()),
        address_lines=tuple(a for a in (text(subcomponent(component(address, 1), 1)), text(component(address, 2))) if a),
        city=text(component(address, 3)),
        postcode=text(component(address, 5)),
        phone=text(component(field(pid, 13).split("~")[0], 1)),
    )
    return PidReading(patient, tuple(locals_), status if _STATUS.match(status) else None)
