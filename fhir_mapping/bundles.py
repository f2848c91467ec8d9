"""Bundles the gateway writes: urn:uuid fullUrls inside, references rewritten to match."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["bundle_of", "entry_full_url"]

_LOCAL_REF = re.compile(r"^(?P<type>[A-Z][A-Za-z]+)/(?P<id>[0-9a-f-]{36})$")


def entry_full_url(resource: dict[str, Any]) -> str:
    return f"urn:uuid:{resource['id']}"


def bundle_of(resources: list[dict[str, Any]], bundle_type: str, bundle_id: str, timestamp: str | None = None) -> dict[str, Any]:
    """A Bundle (FHIR JSON) of `resources`; references to a resource in the Bundle become its urn:uuid fullUrl.

    Stored resources refer to each other as `Type/id` (stable ids); inside a Bundle the
    same references point at the entries' fullUrls, so the Bundle resolves on its own.
    """
    ids = {f"{r['resourceType']}/{r['id']}" for r in resources}
    entries = [{"fullUrl": entry_full_url(r), "resource": _rewrite(r, ids)} for r in resources]
    bundle: dict[str, Any] = {"resourceType": "Bundle", "id": bundle_id, "type": bundle_type}
    if timestamp:
        bundle["timestamp"] = timestamp
    bundle["entry"] = entries
    return bundle


def _rewrite(node: Any, ids: set[str]) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "reference" and isinstance(value, str) and value in ids:
                out[key] = f"urn:uuid:{value.split('/', 1)[1]}"
            elif isinstance(value, dict | list):
                out[key] = _rewrite(value, ids)
            else:
                out[key] = value
        return out
    return [_rewrite(item, ids) if isinstance(item, dict | list) else item for item in node]
