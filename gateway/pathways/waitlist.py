"""The Talking Therapies wait-list snapshot (North Essex policy appendix 1, 4.2.2.4) and the clock breach list.

Who is waiting, by locality, team, step, intervention, therapist and time waiting:
  first appointment   the TT-08 clock is running (referral -> initial assessment; 28-day internal, 42-day national lines)
  second appointment  the TT-09 clock is running (first appointment -> next treatment; 28 days, 90-day tail)
Breaches: every running clock on any pathway episode (PC and TT) past its due time.
Treatment targets (TT-08): of the referrals that entered treatment (first attended assessment) in a period, the share
that did so within each of the service's targets (75% within 6 weeks, 95% within 18 weeks of referral), and whether
each target is met. Waits are counted in Europe/London calendar days, referral day to first-treatment day.
Read-only; the lines come from each service's rule file, so a rule change moves the report with it.
"""

from __future__ import annotations

import statistics
from collections import Counter
from datetime import date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from adapters.problems import GatewayInputError, Kind, Problem
from common.datetimes import london_date, parse_source_date, parse_source_datetime, to_fhir_instant
from fhir_mapping.episodes import episode_clocks
from gateway.pathways.rules.clocks import referral_to_treatment
from gateway.pathways.rules.schema import PathwayRegistry, TalkingTherapiesRules
from gateway.pathways.rules.steps import OPEN_EPISODE, current_step
from gateway.platform.csv_out import csv_text
from gateway.platform.store.repo import ResourceQuery, search_resources

__all__ = [
    "waitlist_snapshot",
    "waitlist_csv",
    "plot_waitlist",
    "require_plot",
    "PlotExtraMissing",
    "reporting_period",
    "treatment_targets",
    "CSV_COLUMNS",
]

CSV_COLUMNS = (
    "episode",
    "service",
    "locality",
    "team",
    "step",
    "intervention",
    "therapist",
    "waiting_for",
    "since",
    "days_waiting",
    "over_target",
    "over_outer_line",
)
_WAITS = {"tt-initial-assessment": ("first-appointment", "national"), "tt-second-session": ("second-appointment", "tail")}


def waitlist_snapshot(
    session: Session,
    registry: PathwayRegistry,
    now: datetime,
    service: str | None = None,
    entered_from: date | None = None,
    entered_to: date | None = None,
) -> dict[str, Any]:
    """The snapshot at `now`; `entered_from`/`entered_to` (inclusive) bound the TT-08 figures to who entered treatment then."""
    rows: list[dict[str, Any]] = []
    breaches: list[dict[str, Any]] = []
    lines: dict[str, dict[str, int]] = {}
    services = [registry.services[service]] if service in registry.services else [] if service else list(registry.services.values())
    episodes = {  # every status: the wait list reads the open ones, the TT-08 figures the ones that entered treatment
        rules.service.id: search_resources(session, ResourceQuery("EpisodeOfCare", service=rules.service.id, count=1_000_000))[0]
        for rules in services
    }
    everyone = [(rules, episode) for rules in services for episode in episodes[rules.service.id] if episode["status"] in OPEN_EPISODE]
    for rules, episode in everyone:
        clocks = episode_clocks(episode)
        for clock in clocks.values():
            if not clock.get("stopped") and parse_source_datetime(clock["due"]) <= now:
                breaches.append(
                    {
                        "episode": episode["id"],
                        "service": rules.service.id,
                        "clock": clock["name"],
                        "rule": clock["rule"],
                        "due": clock["due"],
                        "days_over": (now - parse_source_datetime(clock["due"])).days,
                    }
                )
        if not isinstance(rules, TalkingTherapiesRules):
            continue
        for name, (waiting_for, outer) in _WAITS.items():
            waiting = clocks.get(name)
            if waiting is None or waiting.get("stopped"):
                continue
            rule = rules.clocks[name]
            target = rule.after.days if rule.after else 0
            outer_days = rule.report_after[outer].days if outer in rule.report_after else target
            lines[waiting_for] = {"target_days": target, f"{outer}_days": outer_days}
            since = parse_source_datetime(waiting["start"])
            days = (now - since).days
            rows.append(
                {
                    "episode": episode["id"],
                    "service": rules.service.id,
                    "locality": rules.service.teams.locality,
                    "team": (episode.get("team") or [{}])[0].get("display", ""),
                    "step": current_step(episode),
                    "intervention": next(
                        (e["valueString"] for e in episode.get("extension", []) if e["url"].endswith("/planned-intervention")), ""
                    ),
                    "therapist": (episode.get("careManager") or {}).get("display", ""),
                    "waiting_for": waiting_for,
                    "since": waiting["start"],
                    "days_waiting": days,
                    "over_target": days > target,
                    "over_outer_line": days > outer_days,
                }
            )
    rows.sort(key=lambda r: (-r["days_waiting"], r["episode"]))
    return {
        "generated": to_fhir_instant(now),
        "service": service,
        "lines": lines,
        "summary": _summary(rows, registry),
        "rows": rows,
        "breaches": sorted(breaches, key=lambda b: (-b["days_over"], b["episode"], b["clock"])),
        "treatment_targets": [
            treatment_targets(episodes[rules.service.id], rules, now, entered_from, entered_to)
            for rules in services
            if isinstance(rules, TalkingTherapiesRules)
        ],
    }


def reporting_period(entered_from: str | None, entered_to: str | None) -> tuple[date | None, date | None]:
    """The TT-08 period from its texts (YYYY-MM-DD, both days counted; either may be absent): GatewayInputError
    naming `from` or `to` when one is not a date or the period ends before it starts."""
    days: list[date | None] = []
    for name, text in (("from", entered_from), ("to", entered_to)):
        try:
            days.append(parse_source_date(text) if text else None)
        except ValueError as error:
            raise GatewayInputError(Problem(Kind.VALUE, name, str(error))) from None
    start, end = days
    if start and end and start > end:
        raise GatewayInputError(Problem(Kind.VALUE, "from", f"the period starts ({start}) after it ends ({end})"))
    return start, end


def treatment_targets(
    episodes: list[dict[str, Any]],
    rules: TalkingTherapiesRules,
    now: datetime,
    entered_from: date | None = None,
    entered_to: date | None = None,
) -> dict[str, Any]:
    """TT-08: of the service's `episodes` (any status: a discharged patient counts) those that entered treatment in
    the period, and the share that entered within each target time of referral. `met` is None when nobody entered
    treatment in the period (no share to judge). The period comes from `reporting_period`."""
    waits: list[int] = []
    for episode in episodes:
        found = referral_to_treatment(episode_clocks(episode))
        if found is None or found[1] > now:
            continue
        entered = london_date(found[1])
        if (entered_from and entered < entered_from) or (entered_to and entered > entered_to):
            continue
        waits.append((entered - london_date(found[0])).days)
    targets = []
    for target in rules.treatment_targets:
        within = sum(1 for days in waits if days <= target.within.days)
        targets.append(
            {
                "within_days": target.within.days,
                "target_share": target.share,
                "entered_within": within,
                "share": round(within / len(waits), 3) if waits else None,
                "met": within / len(waits) >= target.share if waits else None,
            }
        )
    return {
        "service": rules.service.id,
        "rule": "TT-08",
        "entered_from": entered_from.isoformat() if entered_from else None,
        "entered_to": entered_to.isoformat() if entered_to else None,
        "entered_treatment": len(waits),
        "median_days": statistics.median(waits) if waits else None,
        "longest_days": max(waits, default=None),
        "targets": targets,
    }


def _summary(rows: list[dict[str, Any]], registry: PathwayRegistry) -> dict[str, Any]:
    out: dict[str, Any] = {"waiting": len(rows)}
    for key in ("locality", "team", "step", "intervention", "therapist", "waiting_for"):
        out[f"by_{key}"] = dict(sorted(Counter(r[key] or "(not allocated)" for r in rows).items()))
    for waiting_for in ("first-appointment", "second-appointment"):
        group = [r for r in rows if r["waiting_for"] == waiting_for]
        out[waiting_for] = {
            "waiting": len(group),
            "over_target": sum(r["over_target"] for r in group),
            "over_outer_line": sum(r["over_outer_line"] for r in group),
            "longest_days": max((r["days_waiting"] for r in group), default=0),
        }
    tails = [r.tail_share for r in registry.services.values() if isinstance(r, TalkingTherapiesRules)]
    second = out["second-appointment"]
    second["share_over_outer_line"] = round(second["over_outer_line"] / second["waiting"], 3) if second["waiting"] else 0.0
    second["tail_limit"] = min(tails) if tails else None  # TT-09: no more than 10% over 90 days
    return out


def waitlist_csv(snapshot: dict[str, Any]) -> str:
    """The snapshot's rows as CSV; a cell that a spreadsheet would run as a formula is written as text (gateway.platform.csv_out)."""
    return csv_text(CSV_COLUMNS, snapshot["rows"])


class PlotExtraMissing(RuntimeError):
    """`--plot` asked for on an install without the `plot` extra (matplotlib: docs/install-weight.md)."""

    def __init__(self) -> None:
        super().__init__(
            "--plot needs matplotlib, which is not installed: pip install 'iap-gateway[plot]' (about 120 MB); "
            "the table, JSON and CSV need nothing more"
        )


def require_plot() -> None:
    """Refuse `--plot` at once (`PlotExtraMissing`), before any work, when the `plot` extra is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotExtraMissing() from None


def plot_waitlist(snapshot: dict[str, Any], path: Path) -> None:
    """Draw the distribution of waits against the 28/42-day (first) and 28/90-day (second) lines, as a PNG.
    Needs the `plot` extra (`PlotExtraMissing` without it)."""
    require_plot()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for axis, (waiting_for, title) in zip(
        axes,
        (
            ("first-appointment", "Waiting for a first appointment (TT-08)"),
            ("second-appointment", "Waiting for a second appointment (TT-09)"),
        ),
        strict=True,
    ):
        days = [r["days_waiting"] for r in snapshot["rows"] if r["waiting_for"] == waiting_for]
        line = snapshot["lines"].get(waiting_for, {})
        top = max([*days, *line.values(), 1]) + 7
        axis.hist(days, bins=range(0, top + 7, 7), color="#005eb8", edgecolor="white")
        for label, value in line.items():
            style = "--" if label == "target_days" else ":"
            axis.axvline(value, color="#d5281b", linestyle=style, label=f"{label.replace('_days', '')}: {value} days")
        axis.set_title(f"{title}: {len(days)} waiting", fontsize=10)
        axis.set_xlabel("days waiting (weekly bins)")
        if line:
            axis.legend(fontsize=8)
    axes[0].set_ylabel("people")
    fig.suptitle(f"NHS Talking Therapies wait list, {snapshot['generated']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
