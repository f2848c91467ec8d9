"""NHS England ODS GP practice file (`epraccur.csv`) -> `Practice` rows (issue 34). No FHIR, no database.

The file has no header; the columns used (ODS data file layout for epraccur): 1 organisation code, 2 name,
5-9 address lines 1-5, 10 postcode, 13 status code (A active, C closed, D dormant, P proposed). A row that cannot be
read is named in `problems` (line and reason) and skipped; the rest load.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass

__all__ = ["Practice", "read_epraccur"]

_ODS = re.compile(r"^[A-Z0-9]{3,10}$")


@dataclass(frozen=True)
class Practice:
    ods: str
    name: str
    address: tuple[str, ...]  # address lines then postcode
    status: str


def _title(text: str) -> str:
    """ODS files are upper case: "THE SYNTHETIC SURGERY" -> "The Synthetic Surgery" (postcodes stay as they are)."""
    return " ".join(w.capitalize() if w.isalpha() else w for w in text.split())


def read_epraccur(data: bytes) -> tuple[list[Practice], list[str]]:
    """(practices, problems) from the bytes of an epraccur.csv."""
    practices: list[Practice] = []
    problems: list[str] = []
    text = data.decode("utf-8-sig", errors="replace")
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) < 13:
            problems.append(f"line {number}: {len(row)} columns, expected at least 13 (epraccur layout)")
            continue
        ods, name = row[0].strip().upper(), row[1].strip()
        if not _ODS.match(ods) or not name:
            problems.append(f"line {number}: no valid organisation code and name")
            continue
        lines = tuple(_title(cell.strip()) for cell in row[4:9] if cell.strip())
        postcode = row[9].strip().upper()
        practices.append(Practice(ods, _title(name), lines + ((postcode,) if postcode else ()), row[12].strip().upper()[:1] or "A"))
    return practices, problems
