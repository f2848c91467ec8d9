"""CSV exports read one row at a time: the header checked once, each row kept with its own raw copy."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from adapters.case_json import source_time
from adapters.problems import GatewayInputError, Kind, Problem, ProblemList
from adapters.referral import check_nhs_number

__all__ = ["csv_rows", "within", "empty_row", "contact_basics", "changed_columns", "ContactRow", "RefusedScores"]

C = TypeVar("C")


@dataclass(frozen=True)
class RefusedScores:
    """What a refused row still records of its measures (issue 33: a risk answer is never lost): the NHS number as given
    (checked where it is used), the contact time if it could be read, and each measure's item scores that could be read."""

    nhs_number: str
    contact_time: datetime | None
    measures: dict[str, list[int | None]]


@dataclass(frozen=True)
class ContactRow(Generic[C]):
    """One export row: parsed (`contact`) or refused (`problems`), with its own raw copy for replay."""

    number: int  # 1-based data row (the header is row 0)
    contact_id: str | None
    contact: C | None = None
    problems: tuple[Problem, ...] = field(default=())
    source: bytes = b""  # the header and this row as CSV
    refused_scores: RefusedScores | None = None  # a refused row's item scores, for its risk answers


def csv_rows(raw: bytes, columns: tuple[str, ...], export: str) -> Iterator[tuple[int, dict[str, str], bytes]]:
    """(1-based row number, stripped values, that row under the header as CSV bytes) for each data row.

    A file that is not UTF-8 or lacks a column is refused whole (nothing in it could be read safely).
    """
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise GatewayInputError(Problem(Kind.STRUCTURE, "file", f"not UTF-8 (byte {exc.start})")) from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
    except csv.Error as exc:  # a header the csv module cannot read (a field over its 131,072 characters)
        raise GatewayInputError(Problem(Kind.STRUCTURE, "file", f"the header line cannot be read as CSV: {exc}")) from None
    if missing:
        raise GatewayInputError([Problem(Kind.REQUIRED, f"column:{c}", f"the {export} must have a {c!r} column") for c in missing])
    for number, record in _records(reader):
        buffer = io.StringIO()
        csv.writer(buffer).writerows([columns, [record.get(c, "") for c in columns]])
        yield number, {k: (v or "").strip() for k, v in record.items() if k}, buffer.getvalue().encode()


def _records(reader: csv.DictReader[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """(1-based row number, record); a row the csv module cannot read refuses the file, naming its line (no 500)."""
    number = 0
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise GatewayInputError(
                Problem(Kind.STRUCTURE, f"row[{number + 1}]", f"line {reader.line_num} cannot be read as CSV: {exc}")
            ) from None
        number += 1
        yield number, record


def changed_columns(first: bytes, again: bytes) -> list[str]:
    """The columns whose values differ between two rows' raw copies (`ContactRow.source`), in the first's order.

    Values are compared as the adapters read them (stripped), so a re-export that only pads a value is the same row.
    """
    (before,), (after,) = (list(csv.DictReader(io.StringIO(raw.decode("utf-8"), newline=""))) for raw in (first, again))
    return [c for c in before if (before[c] or "").strip() != (after.get(c) or "").strip()] + [c for c in after if c not in before]


def contact_basics(value: dict[str, str], where: str, problems: ProblemList) -> tuple[str | None, str | None, datetime | None]:
    """Every contact row's contact_id, NHS number (modulus 11) and contact_time (offset required), checked alike."""
    contact_id = value["contact_id"] or None
    if not contact_id:
        problems.error(Kind.REQUIRED, f"{where}.contact_id", "contact_id is required")
    nhs, reason = check_nhs_number(value["nhs_number"])
    if reason:
        problems.error(Kind.VALUE, f"{where}.nhs_number", reason)
    when = None
    if not value["contact_time"]:
        problems.error(Kind.REQUIRED, f"{where}.contact_time", "contact_time is required")
    else:
        when = source_time(value["contact_time"], f"{where}.contact_time", problems)
    return contact_id, nhs, when


def within(
    rows: Iterator[tuple[int, dict[str, str], bytes]], max_rows: int | None, export: str
) -> Iterator[tuple[int, dict[str, str], bytes]]:
    """`csv_rows` refused whole past `max_rows` rows (IAP_BATCH_MAX_ROWS). Parsing precedes storing, so a file too
    long is refused before any row is stored, and after reading at most one row more than the limit."""
    for number, value, source in rows:
        if max_rows is not None and number > max_rows:
            raise GatewayInputError(
                Problem(Kind.TOO_LARGE, "file", f"the {export} has more than {max_rows} rows (IAP_BATCH_MAX_ROWS): send it in parts")
            )
        yield number, value, source


def empty_row(number: int, value: dict[str, str]) -> ContactRow[Any] | None:
    """A row with every value blank refused with one problem (no checks, no mapping, no raw copy kept); else None."""
    if any(value.values()):
        return None
    return ContactRow(number, None, None, (Problem(Kind.REQUIRED, f"row[{number}]", "the row is empty"),))
