"""A what-if report (gateway.rules.whatif) as text: a table for people, CSV for spreadsheets, JSON for programs.

The console page renders the same `WhatIfReport` (its CSV download is `as_csv`). Cases are named by their Task or
ServiceRequest id: no patient identifier is ever printed.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from common.datetimes import to_fhir_instant
from gateway.rules.candidate import ValueChange
from gateway.rules.whatif_report import CaseChange, WhatIfReport

__all__ = ["as_table", "as_csv", "as_json", "as_dict", "changes_table", "FIELDS"]

# the before/after values a case shows, in this order
FIELDS = (
    "priority",
    "classification",
    "breach_time",
    "breach_colour",
    "safety_calls",
    "outcome",
    "step",
    "route",
    "clocks",
    "rules",
    "version",
)


def changes_table(changes: tuple[ValueChange, ...] | list[ValueChange]) -> str:
    """`rules check`: what the candidate changes against the live file, value by value."""
    if not changes:
        return "no value changes against the live version"
    width = max(len(c.path) for c in changes)
    lines = [f"{'value':<{width}}  live -> candidate"]
    lines += [
        f"{c.path:<{width}}  {c.live if c.live is not None else '(absent)'} -> {c.candidate if c.candidate is not None else '(absent)'}"
        for c in changes
    ]
    return "\n".join(lines)


def _value(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def _differing(case: CaseChange) -> list[str]:
    return [key for key in FIELDS if (key in case.before or key in case.after) and case.before.get(key) != case.after.get(key)]


def as_table(report: WhatIfReport) -> str:
    lines = [
        f"what-if: {report.service_id} {report.kind} {report.live_version or '(none live)'} -> {report.candidate_version}",
        f"replayed {report.replayed} case(s) received {to_fhir_instant(report.since)} .. {to_fhir_instant(report.now)}"
        f" (read-only; nothing written, nothing sent); {report.resent} re-send(s) skipped; {report.unreadable} unreadable",
        f"changed: {len(report.cases)} case(s); open cases a new version would treat differently: {len(report.open_cases_changed)}",
    ]
    if report.value_changes:
        lines += ["", "values changed:"] + [f"  {c.path}: {_value(c.live)} -> {_value(c.candidate)}" for c in report.value_changes]
    if report.counts:
        lines += ["", "by kind of change:"] + [f"  {kind:<15} {count}" for kind, count in report.counts.items()]
    for case in report.cases:
        lines += [
            "",
            f"{case.reference}  {case.channel}  received {to_fhir_instant(case.received_at)}  {'open' if case.open else 'closed'}",
        ]
        lines.append(f"  changes: {', '.join(case.kinds)}; rules: {', '.join(case.rule_ids) or '-'}")
        for key in _differing(case):
            lines.append(f"  {key}: {_value(case.before.get(key))} -> {_value(case.after.get(key))}")
        for change in case.inputs:
            lines.append(f"  input {change.path}: {_value(change.live)} -> {_value(change.candidate)}")
    return "\n".join(lines)


def as_csv(report: WhatIfReport) -> str:
    """One row per changed case: its kinds, rules, inputs, and every before/after value."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        ["case", "channel", "received_at", "open", "changes", "rule_ids", "inputs"]
        + [f"{k}_{w}" for k in FIELDS for w in ("before", "after")]
    )
    for case in report.cases:
        inputs = "; ".join(f"{c.path}: {_value(c.live)} -> {_value(c.candidate)}" for c in case.inputs)
        values = [_csv(side.get(k)) for k in FIELDS for side in (case.before, case.after)]
        writer.writerow(
            [
                case.reference,
                case.channel,
                to_fhir_instant(case.received_at),
                "yes" if case.open else "no",
                " ".join(case.kinds),
                " ".join(case.rule_ids),
                inputs,
                *values,
            ]
        )
    return out.getvalue()


def _csv(value: Any) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text  # a spreadsheet must not read a value as a formula


def as_dict(report: WhatIfReport) -> dict[str, Any]:
    def change(c: ValueChange) -> dict[str, Any]:
        return {"path": c.path, "live": c.live, "candidate": c.candidate}

    return {
        "service": report.service_id,
        "kind": report.kind,
        "live_version": report.live_version,
        "candidate_version": report.candidate_version,
        "since": to_fhir_instant(report.since),
        "now": to_fhir_instant(report.now),
        "replayed": report.replayed,
        "resent": report.resent,
        "unreadable": report.unreadable,
        "value_changes": [change(c) for c in report.value_changes],
        "counts": report.counts,
        "open_cases_changed": report.open_cases_changed,
        "cases": [
            {
                "case": c.reference,
                "channel": c.channel,
                "received_at": to_fhir_instant(c.received_at),
                "open": c.open,
                "changes": list(c.kinds),
                "rule_ids": list(c.rule_ids),
                "inputs": [change(i) for i in c.inputs],
                "before": c.before,
                "after": c.after,
            }
            for c in report.cases
        ],
    }


def as_json(report: WhatIfReport) -> str:
    return json.dumps(as_dict(report), indent=2)
