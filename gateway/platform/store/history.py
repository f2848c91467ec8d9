"""A resource's versions (resource_versions, written with each version by repo.put_resources): FHIR vread and
_history. Each read starts from repo.get_resource, so a resource a bound client may not see has no history for it."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.platform.store.models import ResourceVersionRow
from gateway.platform.store.repo import get_resource

__all__ = ["history", "version"]


def history(session: Session, resource_type: str, resource_id: str) -> list[dict[str, Any]] | None:
    """Every kept version, newest first (None: no such resource). A resource stored before versions were kept
    starts its history at the version it had then."""
    current = get_resource(session, resource_type, resource_id)
    if current is None:
        return None
    rows = session.execute(
        select(ResourceVersionRow.content)
        .where(ResourceVersionRow.resource_type == resource_type, ResourceVersionRow.id == resource_id)
        .order_by(ResourceVersionRow.version_id.desc())
    ).scalars()
    versions = [json.loads(content) for content in rows]
    if not versions or versions[0]["meta"]["versionId"] != current["meta"]["versionId"]:
        versions.insert(0, current)
    return versions


def version(session: Session, resource_type: str, resource_id: str, version_id: str) -> tuple[dict[str, Any] | None, bool]:
    """(the version, whether the resource exists): vread."""
    current = get_resource(session, resource_type, resource_id)
    if current is None:
        return None, False
    if current["meta"]["versionId"] == version_id:
        return current, True
    if not version_id.isdigit() or len(version_id) > 9:  # versions are counted from 1 in an INTEGER column
        return None, True
    content = session.execute(
        select(ResourceVersionRow.content).where(
            ResourceVersionRow.resource_type == resource_type,
            ResourceVersionRow.id == resource_id,
            ResourceVersionRow.version_id == int(version_id),
        )
    ).scalar_one_or_none()
    return (json.loads(content) if content is not None else None), True
