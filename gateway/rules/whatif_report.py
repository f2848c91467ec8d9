"""A what-if report (gateway.rules.whatif, gateway.rules.whatif_pathways): the counts and every case decided otherwise."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from gateway.rules.candidate import ValueChange


@dataclass(frozen=True)
class CaseChange:
    """One case the candidate decides differently: what changes, before (stored) and after (candidate), and why."""

    reference: str  # Task/<id> or ServiceRequest/<id>: never a patient identifier
    channel: str
    received_at: datetime
    open: bool
    kinds: tuple[str, ...]  # priority, classification, breach-time, breach-colour, safety-calls, refused, service, ...
    before: dict[str, str | int | None]
    after: dict[str, str | int | None]
    rule_ids: tuple[str, ...]  # the rules whose outcome differs
    inputs: tuple[ValueChange, ...]  # the candidate's changed values this case's decision reads


@dataclass(frozen=True)
class WhatIfReport:
    """The whole answer: counts by kind of change, and every changed case."""

    service_id: str
    kind: str
    live_version: str | None
    candidate_version: str
    since: datetime
    now: datetime
    replayed: int = 0  # cases (CAS) or referrals (pathway) replayed
    resent: int = 0  # later messages of a case already replayed (its first message decided it)
    unreadable: int = 0  # stored messages the adapters refuse today (counted, never guessed at)
    value_changes: tuple[ValueChange, ...] = ()
    cases: list[CaseChange] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for case in self.cases:
            for kind in case.kinds:
                out[kind] = out.get(kind, 0) + 1
        return dict(sorted(out.items()))

    @property
    def open_cases_changed(self) -> list[str]:
        """The open cases a new version would treat differently (it applies to new decisions only: these keep theirs)."""
        return [c.reference for c in self.cases if c.open]
