"""Rule file history (issue 37): each activated version stored with who activated it and when, audited.

`activate` checks the candidate as start-up does (gateway.rules.candidate), records the version and an AuditEvent in
one transaction, and puts the file in the live rules folder (an atomic replace, undone if the commit fails). Running
gateways take a CAS file within IAP_RULES_RELOAD_SECONDS (gateway.rules.versions), others at their next start: it
applies to decisions made from then on. Stored decisions are never re-decided: a case keeps the priority,
classification and breach time its version gave it, and names that version (Task input `rule-set`, Provenance policy);
its colours and safety calls follow that version too (the content of a live version that predates the history is kept
at the first activation, KEPT_LIVE). `iap-gateway rules what-if` lists the open cases a new version would treat
differently before anyone activates it; `rules apply-to-open` moves them on (gateway.rules.apply_open).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from gateway.cas.rules.schema import RuleFileError
from gateway.platform.audit import EVENT_APPLICATION, add_event, audit_event
from gateway.platform.security.principal import SYSTEM
from gateway.platform.settings import Settings
from gateway.platform.store.db import write_transaction
from gateway.platform.store.models import RuleFileVersionRow
from gateway.rules.candidate import Candidate, live_file

__all__ = ["Activation", "activate", "activations", "activation_of", "ActivationRefused", "KEPT_LIVE"]

# who "activated" the row that keeps the content a first activation replaced (a version in use before history was
# kept): open cases it decided keep following it (gateway.rules.versions); not listed as an activation
KEPT_LIVE = "(in use before rule file history)"


class ActivationRefused(RuleFileError):
    """A valid candidate that may not be activated as it is (its version names other content)."""


@dataclass(frozen=True)
class Activation:
    label: str
    service_id: str
    version: str
    sha256: str
    activated_at: datetime
    activated_by: str


def _of(row: RuleFileVersionRow) -> Activation:
    return Activation(row.label, row.service_id, row.version, row.sha256, row.activated_at, row.activated_by)


def activate(sessions: sessionmaker[Session], candidate: Candidate, by: str, now: datetime, settings: Settings) -> Activation:
    """Record `candidate` as the live version of its service (who, when; audited) and put it in the live folder.

    Refused (nothing changed) when its version is the live version's but its values differ, or when that version was
    activated before with other content: decisions name the version, so one version must mean one content."""
    by = by.strip()
    if not by:
        raise ActivationRefused("activation needs the name of the person activating it (--by)")
    digest = hashlib.sha256(candidate.text.encode("utf-8")).hexdigest()
    changed = [c for c in candidate.changes if c.path != "version"]
    versioned = candidate.kind != "sender"  # sender profiles carry no version: each activation is kept by its content
    if versioned and candidate.live is not None and candidate.version == candidate.live_version and changed:
        raise ActivationRefused(
            f"{candidate.source.name}: version {candidate.version} is the live version's, but {len(changed)} value(s) differ "
            f"({', '.join(c.path for c in changed[:5])}): give the changed file a new version"
        )
    target = live_file(candidate.kind, candidate.service_id, settings)
    replaced: list[str | None] = []
    try:
        with write_transaction(sessions) as session:
            if candidate.kind == "cas-queue" and candidate.live_version and candidate.live_version != candidate.version and target.exists():
                _keep_live(session, candidate, target.read_text(encoding="utf-8"), now)
            activation = _record(session, candidate, digest, by, now)
            replaced.append(_replace(target, candidate.text))  # last, so only a failed COMMIT can need it undone
    except BaseException:
        if replaced:
            _restore(target, replaced[0])
        raise
    return activation


def _record(session: Session, candidate: Candidate, digest: str, by: str, now: datetime) -> Activation:
    """The history row and its AuditEvent, in the caller's transaction."""
    earlier = session.scalars(select(RuleFileVersionRow.sha256).where(RuleFileVersionRow.label == candidate.label)).all()
    if candidate.kind != "sender" and any(sha != digest for sha in earlier):
        raise ActivationRefused(
            f"{candidate.source.name}: version {candidate.version} of {candidate.service_id} was activated before with "
            "other content: give the changed file a new version"
        )
    row = RuleFileVersionRow(
        kind=candidate.kind,
        service_id=candidate.service_id,
        version=candidate.version,
        label=candidate.label,
        sha256=digest,
        content=candidate.text,
        activated_at=now,
        activated_by=by[:128],
    )
    session.add(row)
    session.flush()
    changes = "; ".join(f"{c.path}: {c.live} -> {c.candidate}" for c in candidate.changes)
    add_event(
        session,
        audit_event(
            event_type=EVENT_APPLICATION,
            interaction="update",
            outcome="0",
            outcome_desc=f"rule file {candidate.label} activated by {by[:64]} (was {candidate.live_version or 'none'})",
            recorded=now,
            principal=SYSTEM,
            address=None,
            entities=[f"RuleFileVersion/{row.seq}"],
            description=f"iap-gateway rules activate: {changes}"[:256],
            extra_agents=[{"who": {"display": by[:64]}, "requestor": True}],
        ),
    )
    return _of(row)


def _keep_live(session: Session, candidate: Candidate, text: str, now: datetime) -> None:
    """The content of the live version being replaced, when the history lacks it: cases it decided follow it still."""
    label = f"{candidate.service_id} {candidate.kind} {candidate.live_version}"
    if session.scalars(select(RuleFileVersionRow.seq).where(RuleFileVersionRow.label == label).limit(1)).first() is not None:
        return
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    session.add(
        RuleFileVersionRow(
            kind=candidate.kind,
            service_id=candidate.service_id,
            version=candidate.live_version or "-",
            label=label,
            sha256=digest,
            content=text,
            activated_at=now,
            activated_by=KEPT_LIVE,
        )
    )


def _replace(target: Path, text: str) -> str | None:
    """Write `text` to `target` atomically; the text it replaced (None: there was no file)."""
    previous = target.read_text(encoding="utf-8") if target.exists() else None
    scratch = target.with_name(f".{target.name}.activating")
    scratch.write_text(text, encoding="utf-8")
    os.replace(scratch, target)
    return previous


def _restore(target: Path, previous: str | None) -> None:
    if previous is None:
        target.unlink(missing_ok=True)
    else:
        _replace(target, previous)


def activations(session: Session, service_id: str | None = None) -> list[Activation]:
    """Every activation, oldest first (of one service when given)."""
    query = select(RuleFileVersionRow).where(RuleFileVersionRow.activated_by != KEPT_LIVE).order_by(RuleFileVersionRow.seq)
    if service_id:
        query = query.where(RuleFileVersionRow.service_id == service_id)
    return [_of(row) for row in session.scalars(query)]


def activation_of(session: Session, label: str) -> Activation | None:
    """The latest activation of the version a decision names (`label`), or None (it came with the code's own files)."""
    row = session.scalars(
        select(RuleFileVersionRow)
        .where(RuleFileVersionRow.label == label, RuleFileVersionRow.activated_by != KEPT_LIVE)
        .order_by(RuleFileVersionRow.seq.desc())
        .limit(1)
    ).first()
    return _of(row) if row is not None else None
