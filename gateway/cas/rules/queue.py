"""CAS queue state rules: breach status (CAS-09) and the never-downgrade rule (CAS-08) on re-sent referrals."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from adapters.problems import GatewayInputError, Kind, Problem
from common import codes
from common.datetimes import parse_source_datetime
from gateway.cas.rules.schema import BreachStatusRules

__all__ = ["breach_status", "breach_time", "merge_resent_task", "priority_rank"]


def breach_time(task: dict[str, Any]) -> datetime:
    return parse_source_datetime(task["restriction"]["period"]["end"])


def breach_status(breach: datetime, now: datetime, rules: BreachStatusRules) -> str:
    """CAS-09: green, amber (within `amber_within` of breaching), red (breached), black (breached over `black_after`)."""
    remaining = breach - now
    if remaining < -rules.black_after:
        return "black"
    if remaining <= timedelta(0):
        return "red"
    if remaining <= rules.amber_within:
        return "amber"
    return "green"


def priority_rank(priority: str | None) -> int:
    return codes.PRIORITY_ORDER.index(priority) if priority in codes.PRIORITY_ORDER else 0


def merge_resent_task(existing: dict[str, Any], incoming: dict[str, Any]) -> dict[str, Any]:
    """A referral sent again (same referral, new message): may make the case more urgent, never less (CAS-08).

    Keeps the case's history (operations, notes, suitability); takes the earlier breach time, the
    higher priority and an Urgent CN Review classification from the new message. A later breach
    time or lower priority is refused with nothing changed.
    """
    if breach_time(incoming) > breach_time(existing) or priority_rank(incoming.get("priority")) < priority_rank(existing.get("priority")):
        raise GatewayInputError(
            Problem(
                Kind.CONFLICT,
                "Task.priority",
                f"CAS-08: the re-sent referral would downgrade case Task/{existing['id']} "
                f"(breach {existing['restriction']['period']['end']} -> {incoming['restriction']['period']['end']}, "
                f"priority {existing.get('priority')} -> {incoming.get('priority')}); priority may only be upgraded; nothing changed",
            ),
            stage="rules",
        )
    merged = {k: v for k, v in existing.items() if k != "meta"}
    merged["priority"] = incoming["priority"]
    merged["restriction"] = {"period": {**existing["restriction"]["period"], "end": incoming["restriction"]["period"]["end"]}}
    new_class = ((incoming.get("businessStatus") or {}).get("coding") or [{}])[0].get("code")
    if new_class == "urgent-cn-review":
        merged["businessStatus"] = incoming["businessStatus"]
    seen = {_key(i) for i in existing.get("input", [])}
    merged["input"] = [*existing.get("input", []), *[i for i in incoming.get("input", []) if _key(i) not in seen]]
    merged["lastModified"] = incoming["lastModified"]
    return merged


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
