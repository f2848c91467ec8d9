"""The one datetime module: source times in, FHIR instants out, Europe/London explicit.

Rules (style.md, lessons from LinuxForHealth #55 / FHIR-Converter #481):
- a source time without a UTC offset is refused, never guessed from the host zone; the one exception is
  HL7 v2 TS (`parse_hl7_time`), whose offset the standard makes optional: UK senders mean their local
  time (Europe/London unless their sender profile says otherwise), read in that zone explicitly;
- FHIR output is written in Europe/London local time with its offset (GMT/BST aware);
- durations are ISO 8601 (``PT6H``) in rule files.

It imports nothing of the project, so adapters, fhir_mapping and gateway all use it (package `common`).
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from functools import cache
from zoneinfo import ZoneInfo

__all__ = [
    "LONDON",
    "parse_source_datetime",
    "parse_source_date",
    "to_fhir_instant",
    "parse_iso_duration",
    "format_iso_duration",
    "OffsetMissing",
    "add_working_days",
    "add_months",
    "add_calendar_months",
    "age_reached",
    "london_date",
    "add_wall_clock",
    "end_of_london_day",
    "is_england_bank_holiday",
    "Hl7Time",
    "parse_hl7_time",
    "LocalTimeMissing",
]

LONDON = ZoneInfo("Europe/London")

_OFFSET_RE = re.compile(r"(Z|[+-]\d{2}:\d{2})$")
_DATETIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})?$")


class OffsetMissing(ValueError):
    """A date-time was given without a UTC offset."""


def parse_source_datetime(value: str) -> datetime:
    """Parse an ISO 8601 date-time that must carry an offset; return it as an aware UTC datetime.

    Raises ValueError (OffsetMissing when only the offset is missing) with a message fit for a sender.
    """
    if not isinstance(value, str) or not _DATETIME_RE.match(value):
        raise ValueError(f"{value!r} is not an ISO 8601 date-time (YYYY-MM-DDThh:mm:ss+hh:mm)")
    if not _OFFSET_RE.search(value):
        raise OffsetMissing(f"{value!r} has no timezone offset; send Z or +hh:mm")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value!r} is not a real date-time") from None
    return parsed.astimezone(UTC)


class LocalTimeMissing(ValueError):
    """A local time that does not exist (the hour skipped when the clocks go forward)."""


@dataclass(frozen=True)
class Hl7Time:
    """An HL7 v2 TS as read: the instant (aware, UTC), the calendar date as written, and how it was read."""

    moment: datetime
    day: date
    has_time: bool
    repeated_hour: bool = False  # a local time in the hour the autumn change repeats: read as the first (fold=0)


_HL7_TS = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(?:(\d{2})(\d{2})?(?:(\d{2})(?:\.(\d{1,6}))?)?)?([+-]\d{4})?$")


def parse_hl7_time(value: str, local_zone: tzinfo = LONDON) -> Hl7Time:
    """HL7 v2 TS/DTM `YYYY[MM[DD[HH[MM[SS[.S...]]]]]][+/-ZZZZ]` (the precision component after `^` ignored).

    With an offset, that offset. Without one, the sender's local time in `local_zone` (its profile; Europe/London
    by default), BST-aware: a time in the hour the autumn change repeats is read as the first of the two
    (`repeated_hour` set, for the caller to keep a warning), a time in the hour skipped in spring raises
    LocalTimeMissing. Reduced precision (to the minute, hour, day, month) and fractional seconds are taken.
    Raises ValueError for anything else.
    """
    match = _HL7_TS.match(value.split("^", 1)[0])
    if not match:
        raise ValueError("is not an HL7 timestamp (YYYYMMDD[HHMM[SS[.SSSS]]][+ZZZZ])")
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    try:
        wall = datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int((fraction or "0").ljust(6, "0")),
        )
        if offset:
            sign = -1 if offset[0] == "-" else 1
            zone: tzinfo = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[3:])))
            return Hl7Time(wall.replace(tzinfo=zone).astimezone(UTC), wall.date(), hour is not None)
    except ValueError:
        raise ValueError("is not a real date/time") from None
    first, second_reading = wall.replace(tzinfo=local_zone, fold=0), wall.replace(tzinfo=local_zone, fold=1)
    moment = first.astimezone(UTC)
    if moment.astimezone(local_zone).replace(tzinfo=None) != wall:
        raise LocalTimeMissing(f"is a local time that does not exist in {local_zone} (the clocks went forward)")
    repeated = hour is not None and first.utcoffset() != second_reading.utcoffset()
    return Hl7Time(moment, wall.date(), hour is not None, repeated)


def parse_source_date(value: str) -> date:
    """Parse a calendar date YYYY-MM-DD."""
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a date (YYYY-MM-DD)") from None


def to_fhir_instant(moment: datetime) -> str:
    """Write an aware datetime as a FHIR instant in Europe/London local time with its offset."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime reached the FHIR boundary")
    local = moment.astimezone(LONDON)
    text = local.isoformat(timespec="seconds")
    # GMT is written "Z", as the FHIR models serialise it, so one instant always has one spelling
    return text[:-6] + "Z" if text.endswith("+00:00") else text


_DURATION_RE = re.compile(r"^P(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+)S)?)?$")


def parse_iso_duration(value: str) -> timedelta:
    """Parse the ISO 8601 durations rule files use: PnD, PTnH, PTnM, PTnS and combinations."""
    match = _DURATION_RE.match(value or "")
    if not match or value in ("P", "PT") or value.endswith("T"):
        raise ValueError(f"{value!r} is not an ISO 8601 duration such as PT6H or PT20M")
    parts = {k: int(v) for k, v in match.groupdict().items() if v}
    return timedelta(days=parts.get("d", 0), hours=parts.get("h", 0), minutes=parts.get("m", 0), seconds=parts.get("s", 0))


def format_iso_duration(delta: timedelta) -> str:
    """Write a (possibly negative) timedelta as ISO 8601, e.g. PT1H20M or -PT5M."""
    sign = "-" if delta < timedelta(0) else ""
    total = abs(int(delta.total_seconds()))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    out = f"{sign}P" + (f"{days}D" if days else "")
    time = (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "") + (f"{seconds}S" if seconds else "")
    if time or not days:
        out += "T" + (time or "0S")
    return out


def add_working_days(moment: datetime, days: int) -> datetime:
    """`moment` plus `days` England working days (Mon-Fri, not an England bank holiday), same London wall time."""
    local = moment.astimezone(LONDON)
    day = local.date()
    remaining = days
    while remaining > 0:
        day += timedelta(days=1)
        if day.weekday() < 5 and not is_england_bank_holiday(day):
            remaining -= 1
    return datetime.combine(day, local.time(), tzinfo=LONDON).astimezone(UTC)


def add_months(day: date, months: int) -> date:
    """`day` plus whole calendar months; a day the target month lacks rolls to the 1st of the next month
    (a 29 February birthday is reached on 1 March; 30 November + 3 months is 1 March)."""
    total = day.year * 12 + day.month - 1 + months
    year, month = divmod(total, 12)
    month += 1
    last = calendar.monthrange(year, month)[1]
    if day.day <= last:
        return date(year, month, day.day)
    return date(year, month, last) + timedelta(days=1)


def age_reached(birth: date, on: date, years: int, months: int = 0) -> bool:
    """Whether someone born on `birth` is at least `years` years and `months` months old on `on` (PC-01, TT-01)."""
    return add_months(birth, years * 12 + months) <= on


def add_calendar_months(moment: datetime, months: int) -> datetime:
    """`moment` plus whole months at the same London wall time (PC-12: a call about 3 months after step out)."""
    local = moment.astimezone(LONDON)
    return datetime.combine(add_months(local.date(), months), local.time(), tzinfo=LONDON).astimezone(UTC)


def london_date(moment: datetime) -> date:
    """The Europe/London calendar date of an instant (a referral received at 00:30 BST is that day, not the day before)."""
    return moment.astimezone(LONDON).date()


def add_wall_clock(moment: datetime, delta: timedelta) -> datetime:
    """`moment` plus `delta` on the Europe/London wall clock: 28 days after 10:00 GMT is 10:00 BST, not 11:00
    (day-based waiting times, PC-06/PC-10/TT-08, are calendar days, whatever the clocks did in between)."""
    local = moment.astimezone(LONDON).replace(tzinfo=None) + delta
    return local.replace(tzinfo=LONDON).astimezone(UTC)


def end_of_london_day(moment: datetime) -> datetime:
    """The end of `moment`'s Europe/London day, as the first instant of the next day (00:00 London, in UTC): a target
    "within N days" is met at any time on its last day (TT-08, TT-09; issue 33), whatever the clocks did in between."""
    following = london_date(moment) + timedelta(days=1)
    return datetime.combine(following, time(0), tzinfo=LONDON).astimezone(UTC)


def is_england_bank_holiday(day: date) -> bool:
    """Whether `day` is a bank holiday in England (the `holidays` package's GB/ENG calendar)."""
    return day in _england_bank_holidays(day.year)


@cache
def _england_bank_holidays(year: int) -> frozenset[date]:
    # one calendar per year, built once: building it cost ~0.5 ms, a quarter of a referral's mapping time
    import holidays  # local import: only rules with working-day windows or in-hours checks pay for the calendar

    return frozenset(holidays.country_holidays("GB", subdiv="ENG", years=year))
