"""Reads the FHIR search layer needs beyond repo.py's named queries; each ends in repo's own search_resources, so
whatever it applies to every read (a bound client's service) applies here too."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.platform.store.models import TokenRow
from gateway.platform.store.repo import ResourceQuery, search_resources

__all__ = ["referring", "resolve"]

_MOST = 1000  # at most this many resources brought in by one _include or _revinclude


def referring(session: Session, source_type: str, param: str, references: list[str]) -> list[dict[str, Any]]:
    """The `source_type` resources whose reference parameter `param` names any of `references` ("Task/<id>"):
    `_revinclude=Provenance:target`. Only parameters kept in the token table (gateway.platform.store.writes._tokens) can be followed."""
    if not references:
        return []
    ids = session.execute(
        select(TokenRow.resource_id)
        .where(TokenRow.resource_type == source_type, TokenRow.param == param, TokenRow.code.in_(sorted(set(references))))
        .distinct()
    ).scalars()
    found = sorted(ids)
    if not found:
        return []
    resources, _ = search_resources(session, ResourceQuery(source_type, ids=found, count=_MOST))
    return resources


def resolve(session: Session, references: list[str], readable: tuple[str, ...]) -> list[dict[str, Any]]:
    """The resources `references` ("Type/id", relative) name, each once: one read per type; unknown or unreadable
    ones left out."""
    wanted: dict[str, set[str]] = {}
    for reference in references:
        rtype, _, rid = reference.partition("/")
        if rtype in readable and rid and "/" not in rid:
            wanted.setdefault(rtype, set()).add(rid)
    out: list[dict[str, Any]] = []
    for rtype, ids in sorted(wanted.items()):
        resources, _ = search_resources(session, ResourceQuery(rtype, ids=sorted(ids), count=_MOST))
        out += resources
    return out[:_MOST]
