"""The typed source model every NHS 111 input becomes: a `Referral` for the CAS queue.

Both inbound shapes (the flat 111 case JSON and the BaRS message Bundle) parse into
this one model, so mapping and rules have one input. Field values are as the sender
sent them, after syntax checks (times are aware, Dx codes are case-normalised); no
routing decisions are made here. An adapter raises when it cannot build the model at
all; value errors it can see past (an NHS number failing modulus 11) travel in
`problems`, so the rules still run and the sender hears every problem in one reply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import Enum

import nhs_number as nhs_number_lib

from adapters.problems import Problem

__all__ = [
    "Channel",
    "Demographics",
    "PathwaysOutcome",
    "RedFlagAnswer",
    "RiskFlag",
    "Professional",
    "Referral",
    "normalise_dx",
    "check_nhs_number",
]


class Channel(Enum):
    """How the case reached the CAS (handbook: 111 option 1/2, 111 online, third party, BSL)."""

    OPTION_1 = "111-option-1"  # NHS Pathways assessment done: Dx timeframe (CAS-05)
    ONLINE = "111-online"  # NHS 111 online, Pathways Dx, lands directly on the queue (CAS-05)
    OPTION_2 = "111-option-2"  # MHCAS call handler: 6-hour default (CAS-03)
    THIRD_PARTY = "third-party"  # MHCAS call handler, caller is not the patient (CAS-03)
    BSL = "bsl-interpreter"  # MHCAS call handler via BSL interpreter (CAS-03)
    BARS = "bars"  # BaRS referral: Pathways-assessed, Dx timeframe (CAS-05)
    MHPL = "mhpl"  # Emergency Services Mental Health Professional Line: timeframe by caller service (CAS-06)

    @property
    def pathways_assessed(self) -> bool:
        return self in (Channel.OPTION_1, Channel.ONLINE, Channel.BARS)


@dataclass(frozen=True)
class Demographics:
    nhs_number: str
    family: str | None = None
    given: tuple[str, ...] = ()
    prefix: tuple[str, ...] = ()
    birth_date: date | None = None
    gender: str | None = None  # FHIR administrative-gender code
    address_lines: tuple[str, ...] = ()
    city: str | None = None
    postcode: str | None = None
    phone: str | None = None


@dataclass(frozen=True)
class PathwaysOutcome:
    """NHS Pathways outcome codes as sent. `dx_element` says where the Dx code was found."""

    dx: str | None = None
    dx_display: str | None = None
    dx_element: str = ""
    symptom_group: str | None = None
    symptom_discriminator: str | None = None
    pathway: str | None = None
    summary: str | None = None


@dataclass(frozen=True)
class RedFlagAnswer:
    question_id: str
    question: str
    answer: bool


@dataclass(frozen=True)
class RiskFlag:
    """A risk or safeguarding flag sent with the referral (BaRS `Flag`)."""

    category_system: str | None
    category_code: str | None
    code_system: str | None
    code: str | None
    display: str | None
    element: str


@dataclass(frozen=True)
class Professional:
    """The emergency-services professional who called the MHPL (CAS-06)."""

    service: str  # police | ambulance | fire | coastguard | other-emergency-service
    name: str
    role: str | None = None
    staff_id: str | None = None  # collar / staff number
    phone: str | None = None


@dataclass(frozen=True)
class Referral:
    source: str  # "nhs111-case" | "bars"
    source_system: str  # identifier system of the sender's case / message id
    source_id: str  # the sender's case id (flat JSON) or Bundle id (BaRS)
    message_id: str  # dedupe key: case id (flat JSON), X-Request-Id (BaRS)
    channel: Channel
    destination: str  # receiving DoS service id: chooses the service and its rule file
    destination_element: str  # where the destination was read, for errors about it
    call_time: datetime  # when the 111 assessment ended: the callback clock starts here
    patient: Demographics
    gp_practice_ods: str | None = None
    pathways: PathwaysOutcome | None = None
    red_flags: tuple[RedFlagAnswer, ...] = ()
    risk_flags: tuple[RiskFlag, ...] = ()
    callback_deadline: datetime | None = None  # sender's deadline (BaRS occurrencePeriod.end)
    caller_relationship: str | None = None
    professional: Professional | None = None
    free_text: str | None = None
    correlation_id: str | None = None
    header_id: str | None = None  # BaRS MessageHeader id (second dedupe key)
    reply_to: str | None = None  # BaRS MessageHeader.source.endpoint
    problems: tuple[Problem, ...] = field(default=())  # errors and warnings found while parsing
    unused: tuple[str, ...] = ()  # input parts the gateway read but does not map (never dropped silently)

    @property
    def has_errors(self) -> bool:
        """Value errors that still let the rest be checked; the pipeline refuses the input after the rules ran."""
        return any(p.is_error for p in self.problems)


_DX_RE = re.compile(r"^dx(\d{2,5})$", re.IGNORECASE)


def normalise_dx(code: str) -> str | None:
    """`DX02`, `dx02`, `Dx02` -> `Dx02`. Digits are kept as sent (Dx010 and Dx10 are different codes)."""
    match = _DX_RE.match(code.strip())
    return f"Dx{match.group(1)}" if match else None


def check_nhs_number(value: object) -> tuple[str | None, str | None]:
    """Return (normalised NHS number, None) or (None, reason). Spaces/dashes are tolerated on input."""
    if not isinstance(value, str) or not value.strip():
        return None, "NHS number is missing"
    digits = re.sub(r"[\s-]", "", value)
    if not re.fullmatch(r"\d{10}", digits):
        return None, "NHS number must be 10 digits"
    if not nhs_number_lib.is_valid(digits):
        return None, "NHS number fails the modulus 11 check digit"
    return digits, None
