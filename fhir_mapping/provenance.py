"""The Provenance the gateway stores with each change it makes: who did what to which version, when, under which
rules, and why (in words)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from common import codes
from common.datetimes import to_fhir_instant
from fhir_mapping.ids import resource_id

RULE_SYSTEM = f"{codes.GATEWAY_BASE}/CodeSystem/domain-rule"


def provenance(
    target: dict[str, Any],
    activity: str,
    who: str,
    rule_ids: tuple[str, ...] | list[str],
    summary: str,
    now: datetime,
    system: str = codes.CAS_OPERATION,
    policy: str | None = None,
) -> dict[str, Any]:
    """Who did what to which version of a resource, when, under which rules (and rule file version), and why (in words)."""
    version = (target.get("meta") or {}).get("versionId")
    ref = f"{target['resourceType']}/{target['id']}"
    record = {
        "resourceType": "Provenance",
        "id": resource_id("Provenance", ref, f"{version or target.get('lastModified') or to_fhir_instant(now)}-{activity}"),
        "target": [{"reference": f"{ref}/_history/{version}" if version else ref}],
        "recorded": to_fhir_instant(now),
        "activity": {"coding": [{"system": system, "code": activity}]},
        "reason": [{"coding": [{"system": RULE_SYSTEM, "code": rule} for rule in rule_ids], "text": summary}],
        "agent": [{"who": {"display": who or "IAP gateway"}}],
    }
    if policy:
        record["policy"] = [policy]
    return record
