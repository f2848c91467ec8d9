"""CSV the gateway writes for people to open (reports): every cell safe from spreadsheet formulas.

A spreadsheet runs a cell that starts with `=`, `+`, `-` or `@` (and, in some, a tab or carriage return first) as a
formula: a therapist named `=HYPERLINK("http://evil","x")` would become a link in the reader's sheet (OWASP "CSV
injection"). Such a text cell is written with a leading `'`, which spreadsheets show as text and do not run. Numbers
are written as numbers (a negative number is not a formula), so figures stay figures.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["safe_cell", "csv_text", "FORMULA_STARTS"]

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    """`value` as a spreadsheet will show it, never run it: text starting like a formula gets a leading `'`."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def csv_text(columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> str:
    """A header and one line per row (the `columns` of each), every cell through `safe_cell`."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: safe_cell(row.get(c, "")) for c in columns})
    return buffer.getvalue()
