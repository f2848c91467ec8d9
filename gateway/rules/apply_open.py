"""A person applies a rule file version to a service's open cases (issue 37: "unless a person asks otherwise").

Open cases follow the version that decided them (gateway.rules.versions). `iap-gateway rules apply-to-open VERSION
--service ID --by NAME` makes every open case of the service follow VERSION's breach colours and safety calls
(CAS-09) from now on: each Task gets the input `rule-set-applied` (its `rule-set`, the version that decided it, stays),
a Provenance naming the person, and the whole change one AuditEvent, in one transaction. The stored priority,
classification and breach time are not re-decided: `rules what-if` shows what those would be.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import Table, select
from sqlalchemy.orm import Session, sessionmaker

from common import codes
from common.datetimes import to_fhir_instant
from fhir_mapping.provenance import provenance
from gateway.cas.rules.schema import RuleFileError, RuleRegistry
from gateway.platform.audit import EVENT_APPLICATION, add_event, audit_event
from gateway.platform.security.principal import SYSTEM
from gateway.platform.store.db import write_transaction
from gateway.platform.store.models import ResourceRow, RuleFileVersionRow
from gateway.platform.store.queue_index import open_cases
from gateway.platform.store.repo import case_rule_set, put_resource

__all__ = ["AppliedCase", "apply_to_open", "APPLIED"]

APPLIED = "rule-set-applied"  # Task input: the version a person made the case follow
_RESOURCES = cast(Table, ResourceRow.__table__)


@dataclass(frozen=True)
class AppliedCase:
    task: str  # Task/<id>, never a patient identifier
    was: str | None  # the version it followed before


def apply_to_open(
    sessions: sessionmaker[Session], registry: RuleRegistry, service_id: str, version: str, by: str, now: datetime
) -> tuple[str, list[AppliedCase]]:
    """Make the service's open cases follow `version` (activated, or the live file's); (its label, the cases changed).
    RuleFileError, nothing changed: no person named, an unknown service, a version never activated for it."""
    by = by.strip()
    if not by:
        raise RuleFileError("applying a version to open cases needs the name of the person asking (--by)")
    live = registry.services.get(service_id)
    if live is None:
        raise RuleFileError(f"unknown CAS service {service_id[:32]!r}; known: {sorted(registry.services)}")
    label = f"{service_id} cas-queue {version}"
    with write_transaction(sessions) as session:
        known = session.scalars(select(RuleFileVersionRow.label).where(RuleFileVersionRow.service_id == service_id)).all()
        if label != live.label and label not in known:
            raise RuleFileError(f"{label} was never activated (activated: {sorted(set(known)) or 'none'}; live: {live.label})")
        c = _RESOURCES.c
        rows = session.execute(
            select(c.content).where(open_cases(_RESOURCES), c.service_id == service_id).order_by(c.breach_at, c.id)
        ).scalars()
        tasks = [json.loads(content) for content in rows]
        changed = [_apply(session, task, case_rule_set(task), label, by, now, service_id) for task in tasks if case_rule_set(task) != label]
        if changed:
            add_event(
                session,
                audit_event(
                    event_type=EVENT_APPLICATION,
                    interaction="update",
                    outcome="0",
                    outcome_desc=f"{len(changed)} open case(s) of {service_id} follow {label}, applied by {by[:64]}",
                    recorded=now,
                    principal=SYSTEM,
                    address=None,
                    entities=[case.task for case in changed],
                    description="iap-gateway rules apply-to-open (CAS-09)",
                    extra_agents=[{"who": {"display": by[:64]}, "requestor": True}],
                ),
            )
    return label, changed


def _apply(session: Session, task: dict[str, object], was: str | None, label: str, by: str, now: datetime, service_id: str) -> AppliedCase:
    inputs = [i for i in cast(list[dict[str, object]], task.get("input") or []) if _code(i) != APPLIED]
    display = "Rule set whose breach colours and safety calls the case follows"
    inputs.append({"type": {"coding": [{"system": codes.CAS_TASK_INPUT, "code": APPLIED, "display": display}]}, "valueString": label})
    task = {**task, "input": inputs, "lastModified": to_fhir_instant(now)}
    stored, _ = put_resource(session, task, now)
    summary = f"Colours and safety calls follow {label} (was {was or 'the live file'}); applied by {by[:64]}"
    put_resource(session, provenance(stored, "rule-version-applied", by[:64], ("CAS-09",), summary, now), now, service_id)
    return AppliedCase(f"Task/{stored['id']}", was)


def _code(given: dict[str, object]) -> object:
    return ((cast(dict[str, list[dict[str, object]]], given.get("type") or {}).get("coding") or [{}])[0]).get("code")
