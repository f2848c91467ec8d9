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
    """`node` with its references to `ids` rewritten: new objects and arrays only on the way to a rewritten
    reference; the rest is shared with `node`, not copied (FHIR JSON here is not changed once built).

    Objects and arrays are told by their exact class: built FHIR JSON holds only plain dicts and lists (`conform`
    refuses anything else). This walk visits every element of every resource in the Bundle, so it is kept lean."""
    if node.__class__ is dict:
        changed: dict[str, Any] | None = None
        for key, value in node.items():
            kind = value.__class__
            if kind is dict or kind is list:
                new = _rewrite(value, ids)
                if new is value:
                    continue
            elif key == "reference" and isinstance(value, str) and value in ids:
                new = f"urn:uuid:{value.split('/', 1)[1]}"
            else:
                continue
            changed = {} if changed is None else changed
            changed[key] = new
        return node if changed is None else {**node, **changed}
    out: list[Any] | None = None
    for index, item in enumerate(node):
        kind = item.__class__
        if kind is dict or kind is list:
            new = _rewrite(item, ids)
            if new is not item:
                out = list(node) if out is None else out
                out[index] = new
    return node if out is None else out
