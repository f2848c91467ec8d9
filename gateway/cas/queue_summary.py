"""The queue at a glance, and a suggested clinical risk level with its evidence (CAS-16). A person confirms it.

Counts by breach status (CAS-09) and classification; cases flagged Urgent CN Review and not yet
reviewed (needing pinking, not allocated); patients at extremes of age waiting; calls that found new
or worsening concern recently (CAS-10). The suggested level applies the rule file's thresholds;
the Clinical Navigator's confirmed level is kept beside it (both stored, CAS-16).
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from common import codes
from common.datetimes import to_fhir_instant
from fhir_mapping.ids import resource_id
from gateway.cas.rules.schema import RiskThresholds, ServiceRules
from gateway.platform.store.queue_index import QueueCounts, latest_tokened, queue_counts, worsening_calls

__all__ = ["service_summary", "queue_summary", "risk_level_observation", "RISK_LEVELS", "RISK_SYSTEM", "SERVICE_ID_SYSTEM"]

RISK_LEVELS = ("low", "medium", "high")
RISK_SYSTEM = f"{codes.GATEWAY_BASE}/CodeSystem/queue-risk-level"
SERVICE_ID_SYSTEM = f"{codes.GATEWAY_BASE}/Id/cas-service"


def queue_summary(
    rules: ServiceRules, counts: QueueCounts, worsening: int, confirmed: dict[str, Any] | None, now: datetime
) -> dict[str, Any]:
    """The CAS-16 summary of one service's open cases, from their counts (gateway.platform.store.queue_index.queue_counts)."""
    statuses = counts.by_breach_status
    classes: Counter[str] = Counter()
    for code, n in counts.by_classification.items():
        classes[codes.CLASSIFICATION_DISPLAY.get(code or "", "(blank)")] += n
    breached = statuses["red"] + statuses["black"]
    evidence = {
        "open_cases": counts.open_cases,
        "breached": breached,
        "black": statuses["black"],
        "urgent_cn_review_not_allocated": counts.urgent_cn_review_not_allocated,
        "extreme_ages_waiting": counts.extreme_ages_waiting,
        "worsening_calls": worsening,
    }
    level, why = _suggest(evidence, rules)
    return {
        "service": rules.service.id,
        "generated_at": to_fhir_instant(now),
        "by_breach_status": {s: statuses[s] for s in ("green", "amber", "red", "black")},
        "by_classification": dict(sorted(classes.items())),
        "evidence": evidence,
        "suggested_risk_level": {"level": level, "because": why, "rule": "CAS-16", "rule_set": rules.label},
        "confirmed_risk_level": confirmed,
    }


def _meets(evidence: dict[str, int], limits: RiskThresholds) -> list[str]:
    hits = []
    if evidence["breached"] >= limits.breached_at_least:
        hits.append(f"{evidence['breached']} breached cases (>= {limits.breached_at_least})")
    if evidence["urgent_cn_review_not_allocated"] >= limits.unallocated_urgent_at_least:
        hits.append(
            f"{evidence['urgent_cn_review_not_allocated']} Urgent CN Review cases not allocated (>= {limits.unallocated_urgent_at_least})"
        )
    if limits.extreme_age_waiting_at_least is not None and evidence["extreme_ages_waiting"] >= limits.extreme_age_waiting_at_least:
        hits.append(f"{evidence['extreme_ages_waiting']} patients at extremes of age waiting (>= {limits.extreme_age_waiting_at_least})")
    return hits


def _suggest(evidence: dict[str, int], rules: ServiceRules) -> tuple[str, list[str]]:
    """High: breaches AND unallocated pinking both at the high marks (handbook: "in combination"); Medium: any medium mark."""
    high = _meets(evidence, rules.queue_risk.high)
    if len([h for h in high if "extremes" not in h]) >= 2:
        extra = [f"{evidence['worsening_calls']} calls found new or worsening concern"] if evidence["worsening_calls"] else []
        return "high", high + extra
    medium = _meets(evidence, rules.queue_risk.medium)
    if medium:
        return "medium", medium
    return "low", ["minimal breaches; Urgent CN Review cases allocated; no marks reached"]


def risk_level_observation(
    service_id: str, suggested: dict[str, Any], level: str, who: str, note: str | None, now: datetime
) -> dict[str, Any]:
    """The confirmed queue risk level, kept with the suggestion and its evidence (CAS-16)."""
    return {
        "resourceType": "Observation",
        "id": resource_id("Observation", f"queue-risk/{service_id}", to_fhir_instant(now)),
        "status": "final",
        "code": {
            "coding": [{"system": RISK_SYSTEM, "code": "queue-risk-level", "display": "CAS queue clinical risk level"}],
            "text": f"{service_id} CAS queue risk level",
        },
        "effectiveDateTime": to_fhir_instant(now),
        "performer": [{"display": who}],
        "focus": [{"identifier": {"system": SERVICE_ID_SYSTEM, "value": service_id}}],
        "valueCodeableConcept": {"coding": [{"system": RISK_SYSTEM, "code": level, "display": level.capitalize()}]},
        "component": [
            {
                "code": {"coding": [{"system": RISK_SYSTEM, "code": "suggested", "display": "Suggested by the gateway"}]},
                "valueCodeableConcept": {
                    "coding": [{"system": RISK_SYSTEM, "code": suggested["level"], "display": suggested["level"].capitalize()}]
                },
            }
        ],
        "note": [{"text": "Evidence: " + "; ".join(suggested["because"])}, *([{"text": note}] if note else [])],
    }


def service_summary(session: Session, rules: ServiceRules, now: datetime, versions: Any = None) -> dict[str, Any]:
    """CAS-16 from the open cases' indexed columns and counts: no case, patient or call record is read whole.
    `versions` (gateway.rules.versions.RuleVersions): a case decided under another version counts by that version's
    colour thresholds (CAS-09, issue 37); without it, every case by `rules`'."""
    service_id, risk = rules.service.id, rules.queue_risk
    limits = risk.extreme_age
    counts = queue_counts(
        session,
        service_id,
        now,
        rules.breach_status.amber_within,
        rules.breach_status.black_after,
        limits.get("under", 0),
        limits.get("over", 200),
        versions.differing(rules) if versions is not None else None,
    )
    worsening = worsening_calls(session, service_id, now - risk.worsening_within)
    latest = latest_tokened(session, "Observation", service_id, RISK_SYSTEM, "queue-risk-level")
    confirmed = (
        {
            "level": latest["valueCodeableConcept"]["coding"][0]["code"],
            "suggested_then": latest["component"][0]["valueCodeableConcept"]["coding"][0]["code"],
            "by": latest["performer"][0]["display"],
            "at": latest["effectiveDateTime"],
            "observation": f"Observation/{latest['id']}",
        }
        if latest
        else None
    )
    return queue_summary(rules, counts, worsening, confirmed, now)
