"""The demo's CAS cases: the fixtures (fixtures/nhs111, fixtures/mhpl) moved in time so that, at `now`, the queue
shows what a shift looks like: green, amber, red and black cases side by side (CAS-09), not a queue of cases
breached months ago because the fixtures' call times are fixed.

Each case's every date-time is moved by one amount, chosen from its own timeframe (the Task's restriction period,
as the intake will compute it) so that its time to breach at `now` falls in the colour it is given: green (half its
timeframe left), amber (half the amber window left), red (breached half the black window ago) or black (breached
an hour past the black window). Dates without a time (birth dates) are left as they are.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from adapters.mhpl import parse_mhpl_call
from adapters.nhs111_case import parse_nhs111_case
from common.datetimes import parse_source_datetime
from gateway.cas.intake import CHANNEL_BARS, CHANNEL_MHPL, Intake, detect_kind, map_offline
from gateway.cas.rules.schema import RuleRegistry
from gateway.platform.messages import Reply, previous

__all__ = ["DemoCase", "COLOURS", "demo_case", "demo_case_files", "shift_times"]

COLOURS = ("green", "amber", "red", "black")
_DATETIME = re.compile(r'"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2}))"')


@dataclass(frozen=True)
class DemoCase:
    name: str
    kind: str  # CHANNEL_NHS111 | CHANNEL_BARS | CHANNEL_MHPL
    raw: bytes
    colour: str  # the breach status it was placed in at the time it was made for

    @property
    def request_id(self) -> str:
        """A BaRS message's transport ids (X-Request-Id, X-Correlation-Id): stable, so a second load finds it stored."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"demo:{self.name}"))

    def stored(self, sessions: sessionmaker[Session]) -> bool:
        """Loaded before (into this database). Its times then differ from this run's, and the intake would refuse a
        different message reusing the id, so the case is left as it is: it has aged since, as a real one would."""
        if self.kind == CHANNEL_BARS:
            return previous(sessions, CHANNEL_BARS, self.request_id) is not None
        message_id = parse_mhpl_call(self.raw).message_id if self.kind == CHANNEL_MHPL else parse_nhs111_case(self.raw).message_id
        return previous(sessions, self.kind, message_id) is not None

    def send(self, intake: Intake) -> Reply:
        """Through the same intake as HTTP."""
        if self.kind == CHANNEL_MHPL:
            return intake.receive_mhpl_call(self.raw)
        if self.kind == CHANNEL_BARS:
            return intake.receive_bars(self.raw, self.request_id, self.request_id)
        return intake.receive_nhs111_case(self.raw)


def shift_times(raw: bytes, delta: timedelta) -> bytes:
    """Every JSON date-time string in `raw` moved by `delta`, keeping its UTC offset."""

    def moved(match: re.Match[str]) -> str:
        return json.dumps((datetime.fromisoformat(match.group(1)) + delta).isoformat())

    return _DATETIME.sub(moved, raw.decode("utf-8")).encode("utf-8")


def demo_case_files(fixtures: Path) -> list[Path]:
    """The demo's inputs: every 111 case and BaRS message in fixtures/nhs111, then the MHPL calls in fixtures/mhpl."""
    return [*sorted((fixtures / "nhs111").glob("*.json")), *sorted((fixtures / "mhpl").glob("*.json"))]


def demo_case(path: Path, index: int, registry: RuleRegistry, now: datetime) -> DemoCase:
    """The `index`-th demo case, placed in colour COLOURS[index % 4] at `now` (a timeframe too short to be green
    without a call in the future is placed amber)."""
    amber = min(s.breach_status.amber_within for s in registry.services.values())
    black = max(s.breach_status.black_after for s in registry.services.values())
    raw = path.read_bytes()
    kind = CHANNEL_MHPL if path.parent.name == "mhpl" else detect_kind(raw)
    return _placed(path.name, kind, raw, COLOURS[index % len(COLOURS)], registry, now, amber, black)


def _placed(
    name: str, kind: str, raw: bytes, colour: str, registry: RuleRegistry, now: datetime, amber: timedelta, black: timedelta
) -> DemoCase:
    """`raw` moved so that its breach, as mapped, is `colour` at `now`. A timeframe counted in working days depends on
    the start day, so the move is found again from where the last one landed (twice is enough in practice)."""
    shifted = raw
    for _ in range(3):
        start, end = _period(shifted, kind, registry, now)
        timeframe = end - start
        if colour == "green" and timeframe / 2 <= amber:
            colour = "amber"
        remaining = {"green": timeframe / 2, "amber": min(amber, timeframe) / 2, "red": -black / 2, "black": -(black + timedelta(hours=1))}[
            colour
        ]
        delta = (now + remaining - end).total_seconds()
        if abs(delta) < 60:
            break
        shifted = shift_times(shifted, timedelta(seconds=round(delta)))
    return DemoCase(name, kind, shifted, colour)


def _period(raw: bytes, kind: str, registry: RuleRegistry, now: datetime) -> tuple[datetime, datetime]:
    bundle = map_offline(raw, registry, now, kind)
    task = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Task")
    period = task["restriction"]["period"]
    return parse_source_datetime(period["start"]), parse_source_datetime(period["end"])
