"""TT-07: the North Essex step table (policy 9), whose rows combine three columns: severity, functioning and risk. Pure.

  severity     the worse of the PHQ-9 and GAD-7 stepping severities (TT-05, TT-06 (b))
  functioning  from a WSAS total (the rule file's `functioning_bands`): a WSAS in the referral, else the referral's own
               statement (extension referral-functioning), else a WSAS Observation on file within
               `functioning_on_file_within` before the referral; else unknown
  risk         the referral's own statement (extension referral-risk); current intent and the TT-04 exclusions route
               the referral away before the table is read (pathway_routing._excluded); else unknown

The severity's row without functioning/risk is its default; a row naming them applies only when each named column is
known and in its list. A row undecided because a column is unknown leaves the default row to decide, and with
`if_unknown: senior-screening` a senior clinician screens the referral (appendix 1): never an automatic redirect.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.pathways.rules.schema import Allocation, TalkingTherapiesRules

__all__ = ["Columns", "StepChoice", "choose_step", "functioning_column", "risk_column"]


@dataclass(frozen=True)
class Column:
    value: str | None  # None: unknown
    source: str  # where the value came from, in plain words (the decision's reasons name it)

    def __str__(self) -> str:
        return f"{self.value or 'unknown'} ({self.source})"


@dataclass(frozen=True)
class Columns:
    severity: Column
    functioning: Column
    risk: Column


@dataclass(frozen=True)
class StepChoice:
    outcome: str  # step-2 | step-3 | secondary-care | signpost
    decided_by: tuple[str, ...]  # the columns that decided: severity, functioning, risk
    senior_screening: bool  # a senior clinician screens the referral (a column the table needed was unknown)
    reasons: tuple[str, ...]  # plain-words lines for the decision's trace (TT-07)


def functioning_column(
    rules: TalkingTherapiesRules, in_referral: float | None, stated: str | None, on_file: tuple[float, str] | None
) -> Column:
    """The functioning column: a WSAS total in the referral, else the referral's statement, else a WSAS on file
    (`on_file`: the total and where it is, e.g. "Observation/x of 2026-11-01"), else unknown."""
    if in_referral is not None:
        return Column(rules.functioning_from_wsas(in_referral), f"WSAS {in_referral:g} in the referral, functioning_bands")
    if stated is not None:
        return Column(stated, "the referral's statement of functioning")
    if on_file is not None:
        return Column(rules.functioning_from_wsas(on_file[0]), f"WSAS {on_file[0]:g} on file, {on_file[1]}, functioning_bands")
    return Column(None, "no WSAS in the referral or on file and no statement of functioning")


def risk_column(stated: str | None) -> Column:
    if stated is not None:
        return Column(stated, "the referral's statement of risk; no current intent or TT-04 exclusion among its findings")
    return Column(None, "no statement of risk in the referral; no current intent or TT-04 exclusion among its findings")


def _row(number: int, row: Allocation) -> str:
    named = [f"{c} {'/'.join(v)}" for c, v in (("functioning", row.functioning), ("risk", row.risk)) if v]
    return f"step_allocation row {number} ({' + '.join([row.severity, *named])} -> {row.outcome})"


def choose_step(rules: TalkingTherapiesRules, columns: Columns) -> StepChoice:
    """The step for these three columns (TT-07), with the columns that decided and the reasons."""
    severity = columns.severity.value
    rows = list(enumerate(rules.step_allocation, 1))
    default_number, default = next((n, a) for n, a in rows if a.severity == severity and not a.conditional)
    ruled_out: list[str] = []  # known columns that kept a conditional row from applying
    unknown: list[str] = []
    screening = False
    reasons = [f"columns: severity {columns.severity}; functioning {columns.functioning}; risk {columns.risk}"]
    for number, row in rows:
        if row.severity != severity or not row.conditional:
            continue
        named = {c: v for c, v in (("functioning", row.functioning), ("risk", row.risk)) if v is not None}
        missing = [c for c in named if getattr(columns, c).value is None]
        against = [c for c, allowed in named.items() if c not in missing and getattr(columns, c).value not in allowed]
        if against:
            ruled_out += [c for c in against if c not in ruled_out]
            reasons.append(f"{_row(number, row)} does not apply: {', '.join(f'{c} {getattr(columns, c).value}' for c in against)}")
        elif missing:
            unknown += [c for c in missing if c not in unknown]
            screening = screening or row.if_unknown == "senior-screening"
            then = "a senior clinician screens the referral" if row.if_unknown == "senior-screening" else "the default row decides"
            reasons.append(f"{_row(number, row)} cannot be decided: {', '.join(missing)} unknown; {then} (if_unknown: {row.if_unknown})")
        else:
            decided = ("severity", *named)
            reasons.append(f"{_row(number, row)} applies; decided by {', '.join(decided)}")
            return StepChoice(row.outcome, decided, False, tuple(reasons))
    decided = ("severity", *ruled_out)
    reasons.append(f"{_row(default_number, default)} applies; decided by {', '.join(decided)}")
    return StepChoice(default.outcome, decided, screening, tuple(reasons))
