"""The GP practice directory in the store (issue 34): loaded from ODS `epraccur.csv`, read for a letter's "To:".

`load_practices` upserts every practice in the file (a second load refreshes names, addresses and status);
`practice_address` gives a practice's name and address lines, or None for a code the directory does not hold
(the letter is then addressed by code, with a warning).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from adapters.epraccur import Practice
from gateway.platform.store.models import GpPracticeRow

__all__ = ["load_practices", "practice_address"]


def load_practices(session: Session, practices: list[Practice], now: datetime) -> tuple[int, int]:
    """Insert or refresh each practice; (added, updated)."""
    known = {row.ods: row for row in session.execute(select(GpPracticeRow)).scalars()}
    added = updated = 0
    for practice in practices:
        address = "\n".join(practice.address)
        row = known.get(practice.ods)
        if row is None:
            row = GpPracticeRow(ods=practice.ods, name=practice.name, address=address, status=practice.status, updated_at=now)
            session.add(row)
            known[practice.ods] = row
            added += 1
        elif (row.name, row.address, row.status) != (practice.name, address, practice.status):
            row.name, row.address, row.status, row.updated_at = practice.name, address, practice.status, now
            updated += 1
    return added, updated


def practice_address(session: Session, ods: str | None) -> tuple[str, list[str]] | None:
    """(name, address lines) of a practice in the directory, or None."""
    if not ods:
        return None
    row = session.get(GpPracticeRow, ods)
    return (row.name, [line for line in row.address.split("\n") if line]) if row else None
