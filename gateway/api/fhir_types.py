"""The FHIR types this server reads, and what every read answers alike: an unknown type, a bad id, the ETag."""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from adapters.problems import GatewayInputError, Kind, Problem
from gateway.api.responses import FhirResponse
from gateway.platform.audit import note
from gateway.platform.store.models import KEPT_VERSIONS

__all__ = ["READABLE_TYPES", "VERSIONED_TYPES", "not_served", "valid_id", "etag", "not_modified", "served_read"]

READABLE_TYPES = (
    "Task",
    "Patient",
    "ServiceRequest",
    "Encounter",
    "QuestionnaireResponse",
    "Flag",
    "Observation",
    "CommunicationRequest",
    "Provenance",
    "DocumentReference",
    "EpisodeOfCare",
    "Consent",
    "CarePlan",
    "Bundle",
)
# the types whose every version is kept (gateway.platform.store.history): vread and _history; a Task's history shows it was
# never downgraded (CAS-08)
VERSIONED_TYPES: tuple[str, ...] = KEPT_VERSIONS
_ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def not_served(resource_type: str) -> GatewayInputError:
    """An unknown resource type: 404, as for any path not served (FHIR http: unknown type -> 404)."""
    return GatewayInputError(
        Problem(Kind.NOT_FOUND, "type", f"resource type {resource_type[:40]!r} is not served here; see /fhir/metadata")
    )


def valid_id(resource_id: str) -> str:
    if not _ID_RE.match(resource_id):
        raise GatewayInputError(Problem(Kind.VALUE, "id", "not a valid FHIR id"))
    return resource_id


def etag(resource: dict[str, Any]) -> dict[str, str]:
    meta = resource.get("meta")
    return {"ETag": f'W/"{meta["versionId"]}"'} if isinstance(meta, dict) and "versionId" in meta else {}


def not_modified(request: Request, headers: dict[str, str]) -> bool:
    """`If-None-Match` names the version the reply would carry (its ETag, weak or not, or `*`): answer 304."""
    if not headers:
        return False
    tag = headers["ETag"]
    wanted = {t.strip() for t in request.headers.get("if-none-match", "").split(",")}
    return bool(wanted & {tag, tag.removeprefix("W/"), "*"})


def served_read(request: Request, resource: dict[str, Any]) -> Response:
    """A read's reply (read and vread): noted for the AuditEvent, with its ETag; 304 when `If-None-Match` names it."""
    note(resource)
    headers = etag(resource)
    if not_modified(request, headers):
        return Response(status_code=304, headers=headers)
    return FhirResponse(resource, headers=headers)
