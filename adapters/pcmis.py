"""PCMIS (NHS Talking Therapies) contact export: CSV, one row per contact -> typed `PcmisContact`s.

Each row stands alone: a bad row is reported with its problems and never drops the good rows.
A missing column refuses the whole file (nothing in it could be read safely). Columns and codes:
docs/formats/pcmis-contacts.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from adapters.csv_rows import ContactRow, RefusedScores, contact_basics, csv_rows, empty_row, within
from adapters.problems import Kind, ProblemList

__all__ = ["PcmisContact", "PcmisRow", "parse_pcmis_csv", "COLUMNS", "MEASURE_COLUMNS"]

APPOINTMENT_TYPES = ("assessment", "assessment-and-treatment", "treatment", "review-only")
ATTENDANCE = ("attended", "dna", "cancelled-by-patient", "cancelled-by-service")
MEASURE_COLUMNS = {
    "phq-9": [f"phq9_{i}" for i in range(1, 10)],
    "gad-7": [f"gad7_{i}" for i in range(1, 8)],
    "iapt-phobia": ["phobia_social", "phobia_panic", "phobia_specific"],
    "wsas": [f"wsas_{i}" for i in range(1, 6)],
}
RANGES = {"phq-9": (0, 3), "gad-7": (0, 3), "iapt-phobia": (0, 8), "wsas": (0, 8)}
CONSENTS = ("consent_email", "consent_phone", "consent_voicemail", "consent_sms")
COLUMNS = (
    "contact_id",
    "nhs_number",
    "contact_time",
    "appointment_type",
    "attendance",
    "step",
    "therapist_role",
    "therapist",
    *[c for cols in MEASURE_COLUMNS.values() for c in cols],
    "employment_status",
    *CONSENTS,
    "self_referral",
    "gp_contact_allowed",
)


@dataclass(frozen=True)
class PcmisContact:
    contact_id: str
    nhs_number: str
    contact_time: datetime
    appointment_type: str
    attendance: str
    step: int
    therapist_role: str  # PWP (step 2) | HIT (step 3)
    therapist: str
    measures: dict[str, list[int | None]]  # measure id -> item scores (None = not answered; WSAS work N/A = -1)
    employment_status: str | None
    consents: dict[str, bool | None]  # TT-15: email, phone, voicemail, sms
    self_referral: bool
    gp_contact_allowed: bool  # TT-02/TT-14: a self-referred client may ask that the GP is not contacted


PcmisRow = ContactRow[PcmisContact]


def parse_pcmis_csv(raw: bytes, max_rows: int | None = None) -> list[PcmisRow]:
    """Every row, parsed or with its problems (an empty row refused at once). Raises GatewayInputError only for a file
    that cannot be read, or that has more than `max_rows` rows."""
    return [
        empty_row(number, value) or _row(number, value, source)
        for number, value, source in within(csv_rows(raw, COLUMNS, "PCMIS export"), max_rows, "PCMIS export")
    ]


def _row(number: int, value: dict[str, str], source: bytes) -> PcmisRow:
    problems = ProblemList()
    where = f"row[{number}]"
    contact_id, nhs, when = contact_basics(value, where, problems)
    for column, allowed in (("appointment_type", APPOINTMENT_TYPES), ("attendance", ATTENDANCE), ("therapist_role", ("PWP", "HIT"))):
        if value[column] not in allowed:
            problems.error(Kind.VALUE, f"{where}.{column}", f"{column} must be one of {list(allowed)}")
    if value["step"] not in ("2", "3"):
        problems.error(Kind.VALUE, f"{where}.step", "step must be 2 or 3")
    measures = {
        m: [_score(value, c, RANGES[m], where, problems, allow_na=c == "wsas_1") for c in cols] for m, cols in MEASURE_COLUMNS.items()
    }
    flags = {c: _yes_no(value, c, where, problems) for c in (*CONSENTS, "self_referral", "gp_contact_allowed")}
    for column in ("self_referral", "gp_contact_allowed"):
        if flags[column] is None:
            problems.error(Kind.REQUIRED, f"{where}.{column}", f"{column} must be Y or N")
    if problems.has_errors:  # the item scores read are kept: a risk answer is acted on all the same (issue 33)
        return PcmisRow(number, contact_id, None, tuple(problems.items), source, RefusedScores(value["nhs_number"], when, measures))
    assert when is not None and nhs is not None and contact_id is not None
    contact = PcmisContact(
        contact_id=contact_id,
        nhs_number=nhs,
        contact_time=when,
        appointment_type=value["appointment_type"],
        attendance=value["attendance"],
        step=int(value["step"]),
        therapist_role=value["therapist_role"],
        therapist=value["therapist"],
        measures=measures,
        employment_status=value["employment_status"] or None,
        consents={c.removeprefix("consent_"): flags[c] for c in CONSENTS},
        self_referral=bool(flags["self_referral"]),
        gp_contact_allowed=bool(flags["gp_contact_allowed"]),
    )
    return PcmisRow(number, contact_id, contact, tuple(problems.items), source)


def _score(value: dict[str, str], column: str, bounds: tuple[int, int], where: str, problems: ProblemList, allow_na: bool) -> int | None:
    text = value[column]
    if not text:
        return None
    if allow_na and text.upper() == "NA":
        return -1  # WSAS work item: not applicable (retired / not working for reasons unrelated to the problem)
    if not text.isdigit() or not bounds[0] <= int(text) <= bounds[1]:
        problems.error(Kind.VALUE, f"{where}.{column}", f"{column} must be a whole number from {bounds[0]} to {bounds[1]}")
        return None
    return int(text)


def _yes_no(value: dict[str, str], column: str, where: str, problems: ProblemList) -> bool | None:
    text = value[column].upper()
    if text in ("", "U"):
        return None
    if text not in ("Y", "N"):
        problems.error(Kind.VALUE, f"{where}.{column}", f"{column} must be Y, N or empty")
        return None
    return text == "Y"
