"""Which CAS rule file version each open case follows, and activations taken by running gateways (issue 37).

A case keeps the version that decided it (Task input `rule-set`; its token `rule-set`): its breach colour and safety
calls (CAS-09, CAS-02) are worked out from that version's thresholds, not the live file's, until a person applies
another version to it (`iap-gateway rules apply-to-open`, gateway.rules.apply_open). Versions come from the rule file
history (`rule_file_versions`: each activated version's content), parsed once each; a version the history does not
hold (shipped before history was kept) falls back to the live file of its service.

A running gateway takes a new activation without restart: at most every `IAP_RULES_RELOAD_SECONDS` it reads the
history's latest activation id, and when it grew, the newest version of each service activated since becomes the live
one of this gateway (its registry, in place): new decisions use it. Every instance on the same database does the same.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import Any

import structlog
import yaml
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from gateway.cas.rules.schema import RuleFileError, RuleRegistry, ServiceRules
from gateway.platform.store.models import RuleFileVersionRow
from gateway.platform.store.repo import case_rule_set

__all__ = ["RuleVersions", "case_rule_set", "parse_cas_version", "attach"]

log = structlog.get_logger("iap.rules")
CAS_KIND = "cas-queue"


def parse_cas_version(text: str) -> ServiceRules:
    """A CAS rule file's content (as activated) through its schema."""
    try:
        return ServiceRules.model_validate(yaml.safe_load(text))
    except (yaml.YAMLError, ValidationError) as exc:
        raise RuleFileError(f"stored rule file version cannot be read: {exc}") from None


class RuleVersions:
    """The CAS versions open cases follow (parsed once per (service, version)) and the check for new activations."""

    def __init__(self, sessions: sessionmaker[Session], registry: RuleRegistry, every: timedelta | None) -> None:
        self.sessions, self.registry, self.every = sessions, registry, every  # every None: history read once, no reload
        self._by_label: dict[str, ServiceRules] = {}
        self._seen = 0  # the latest activation id taken
        self._checked: datetime | None = None
        self._lock = threading.Lock()

    def rules_for(self, service_id: str | None, label: str | None) -> ServiceRules | None:
        """The rules a case of `service_id` decided under `label` follows: that version's, else the live file's."""
        live = self.registry.services.get(service_id or "")
        if live is None or not label or label == live.label:
            return live
        return self._by_label.get(label, live)

    def differing(self, live: ServiceRules) -> dict[tuple[str, ...], tuple[timedelta, timedelta]]:
        """The service's other versions whose colour thresholds differ from `live`'s, grouped by their thresholds:
        (labels) -> (amber_within, black_after), for the queue summary's counts (gateway.platform.store.queue_index)."""
        mine = (live.breach_status.amber_within, live.breach_status.black_after)
        groups: dict[tuple[timedelta, timedelta], list[str]] = {}
        for label, rules in list(self._by_label.items()):
            if rules.service.id == live.service.id and label != live.label:
                pair = (rules.breach_status.amber_within, rules.breach_status.black_after)
                if pair != mine:
                    groups.setdefault(pair, []).append(label)
        return {tuple(sorted(labels)): pair for pair, labels in groups.items()}

    def colours_differ(self, service_id: str | None) -> bool:
        """Whether some version of the service (of any, for None) colours cases otherwise than its live file: only
        then does the queue need each case's version (gateway.platform.store.queue_index.queue_page)."""
        for label, rules in list(self._by_label.items()):
            live = self.registry.services.get(rules.service.id)
            if live is None or label == live.label or (service_id is not None and rules.service.id != service_id):
                continue
            if (rules.breach_status.amber_within, rules.breach_status.black_after) != (
                live.breach_status.amber_within,
                live.breach_status.black_after,
            ):
                return True
        return False

    def due(self, now: datetime) -> bool:
        if self._checked is None:
            return True
        return self.every is not None and now - self._checked >= self.every

    def refresh(self, now: datetime) -> list[str]:
        """Read activations made since the last look, if a look is due; the labels that became live here."""
        if not self.due(now) or not self._lock.acquire(blocking=False):
            return []
        try:
            first = self._checked is None
            self._checked = now
            with self.sessions() as session:
                latest = session.scalar(select(func.max(RuleFileVersionRow.seq)).where(RuleFileVersionRow.kind == CAS_KIND))
                if latest is None or latest <= self._seen:
                    return []
                rows = session.scalars(
                    select(RuleFileVersionRow)
                    .where(RuleFileVersionRow.kind == CAS_KIND, RuleFileVersionRow.seq > self._seen)
                    .order_by(RuleFileVersionRow.seq)
                ).all()
                self._seen = latest
                return self._take(rows, first)
        finally:
            self._lock.release()

    def _take(self, rows: Any, first: bool) -> list[str]:
        newest: dict[str, ServiceRules] = {}
        earlier: dict[str, set[str]] = {}
        for row in rows:
            try:
                rules = self._by_label.get(row.label) or parse_cas_version(row.content)
            except RuleFileError as error:
                log.error("rules.version_unreadable", label=row.label, error=str(error)[:200])
                continue
            self._by_label[row.label] = rules
            earlier.setdefault(row.service_id, set()).add(row.label)
            newest[row.service_id] = rules
        taken = []
        for service_id, rules in newest.items():
            live = self.registry.services.get(service_id)
            if live is None or live.label == rules.label:
                continue
            # at start the folder is live, unless the history activated a later version than the folder's
            if first and live.label not in earlier[service_id]:
                continue
            self._by_label.setdefault(live.label, live)  # cases it decided keep following it
            try:
                self.registry.replace(rules)
            except RuleFileError as error:
                log.error("rules.activation_refused", label=rules.label, error=str(error)[:200])
                continue
            taken.append(rules.label)
            log.info("rules.activation_taken", label=rules.label, was=live.label)
        if taken:
            from gateway.letters.outbox.letters import use_services  # late: letter heads follow the live service details

            use_services(self.registry)
        return taken


def attach(sessions: sessionmaker[Session], registry: RuleRegistry, reload_seconds: int, now: datetime) -> RuleVersions:
    """Give `registry` its history (read now): open cases' versions, and activations taken every `reload_seconds`."""
    versions = RuleVersions(sessions, registry, timedelta(seconds=reload_seconds) if reload_seconds > 0 else None)
    registry.history = versions
    versions.refresh(now)
    return versions
