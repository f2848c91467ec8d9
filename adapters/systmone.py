"""SystmOne template extract (primary care mental health, RDaSH): CSV, one row per contact -> `SystmOneContact`.

Contacts are coded with CTV3 (PC-04: XaL0u initial contact, XaZrH follow-up); the row carries the
template's item scores (PHQ-9, GAD-7, DIALOG, ReQoL-10, GBO) and the care plan (MHSDS MHS008),
its agreement (MHS009) and a safety plan. Rows stand alone (a bad row never drops the good ones);
a missing column refuses the file. Columns: docs/formats/systmone-extract.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from adapters.csv_rows import ContactRow, RefusedScores, contact_basics, csv_rows, empty_row, within
from adapters.problems import Kind, ProblemList

__all__ = ["SystmOneContact", "SystmOneRow", "parse_systmone_csv", "COLUMNS", "CONTACT_CODES", "MEASURE_COLUMNS"]

# PC-04: the contact codes the service records (CTV3, Read v3)
CONTACT_CODES = {"XaL0u": "Initial contact", "XaZrH": "Follow-up contact"}
MEASURE_COLUMNS = {
    "phq-9": [f"phq9_{i}" for i in range(1, 10)],
    "gad-7": [f"gad7_{i}" for i in range(1, 8)],
    "dialog": [f"dialog_{i}" for i in range(1, 12)],
    "reqol-10": [f"reqol_{i}" for i in range(1, 11)],
    "gbo": [f"gbo_goal_{i}_rating" for i in range(1, 4)],
}
RANGES = {"phq-9": (0, 3), "gad-7": (0, 3), "dialog": (1, 7), "reqol-10": (0, 4), "gbo": (0, 10)}
GOAL_TEXTS = [f"gbo_goal_{i}_text" for i in range(1, 4)]
FLAGS = ("care_plan_mhs008", "care_plan_agreed_mhs009", "safety_plan")
COLUMNS = (
    "contact_id",
    "nhs_number",
    "contact_time",
    "contact_code",
    "clinician",
    "clinician_role",
    *[c for cols in MEASURE_COLUMNS.values() for c in cols],
    *GOAL_TEXTS,
    *FLAGS,
    "care_plan_text",
    "safety_plan_text",
)


@dataclass(frozen=True)
class SystmOneContact:
    contact_id: str
    nhs_number: str
    contact_time: datetime
    contact_code: str  # CTV3
    clinician: str
    clinician_role: str  # MHP | MHWBTC | PCMHH
    measures: dict[str, list[int | None]]
    goal_texts: list[str]
    care_plan: bool  # MHS008 recorded
    care_plan_agreed: bool  # MHS009 recorded
    care_plan_text: str | None
    safety_plan: bool
    safety_plan_text: str | None


SystmOneRow = ContactRow[SystmOneContact]


def parse_systmone_csv(raw: bytes, max_rows: int | None = None) -> list[SystmOneRow]:
    """Every row, parsed or with its problems (an empty row refused at once). Raises GatewayInputError only for a file
    that cannot be read, or that has more than `max_rows` rows."""
    return [
        empty_row(number, value) or _row(number, value, source)
        for number, value, source in within(csv_rows(raw, COLUMNS, "SystmOne extract"), max_rows, "SystmOne extract")
    ]


def _row(number: int, value: dict[str, str], source: bytes) -> SystmOneRow:
    problems = ProblemList()
    where = f"row[{number}]"
    contact_id, nhs, when = contact_basics(value, where, problems)
    if value["contact_code"] not in CONTACT_CODES:
        problems.error(
            Kind.VALUE,
            f"{where}.contact_code",
            f"CTV3 code {value['contact_code'][:12]!r} is not a contact code here; expected {sorted(CONTACT_CODES)} (PC-04)",
        )
    if value["clinician_role"] not in ("MHP", "MHWBTC", "PCMHH"):
        problems.error(Kind.VALUE, f"{where}.clinician_role", "clinician_role must be MHP, MHWBTC or PCMHH")
    measures: dict[str, list[int | None]] = {}
    for measure, columns in MEASURE_COLUMNS.items():
        low, high = RANGES[measure]
        scores: list[int | None] = []
        for column in columns:
            text = value[column]
            if text and (not text.isdigit() or not low <= int(text) <= high):
                problems.error(Kind.VALUE, f"{where}.{column}", f"{column} must be a whole number from {low} to {high}")
            scores.append(int(text) if text.isdigit() and low <= int(text) <= high else None)
        measures[measure] = scores
    flags = {}
    for column in FLAGS:
        if value[column].upper() not in ("Y", "N", ""):
            problems.error(Kind.VALUE, f"{where}.{column}", f"{column} must be Y, N or empty")
        flags[column] = value[column].upper() == "Y"
    if flags["care_plan_agreed_mhs009"] and not flags["care_plan_mhs008"]:
        problems.error(
            Kind.INVARIANT, f"{where}.care_plan_agreed_mhs009", "a care plan agreement (MHS009) needs the care plan (MHS008) (PC-09)"
        )
    complete = {m: None not in s for m, s in measures.items()}
    if value["contact_code"] == "XaL0u" and not ((complete["phq-9"] or complete["gad-7"]) and complete["dialog"]):
        problems.warning(
            Kind.INVARIANT, f"{where}.contact_code", "PC-04: a first contact should have a complete PHQ-9 or GAD-7 and a complete DIALOG"
        )
    if problems.has_errors:  # the item scores read are kept: a risk answer is acted on all the same (issue 33)
        return SystmOneRow(number, contact_id, None, tuple(problems.items), source, RefusedScores(value["nhs_number"], when, measures))
    assert when is not None and nhs is not None and contact_id is not None
    contact = SystmOneContact(
        contact_id=contact_id,
        nhs_number=nhs,
        contact_time=when,
        contact_code=value["contact_code"],
        clinician=value["clinician"],
        clinician_role=value["clinician_role"],
        measures=measures,
        goal_texts=[value[c] for c in GOAL_TEXTS],
        care_plan=flags["care_plan_mhs008"],
        care_plan_agreed=flags["care_plan_agreed_mhs009"],
        care_plan_text=value["care_plan_text"] or None,
        safety_plan=flags["safety_plan"],
        safety_plan_text=value["safety_plan_text"] or None,
    )
    return SystmOneRow(number, contact_id, contact, tuple(problems.items), source)
