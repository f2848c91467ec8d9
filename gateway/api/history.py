"""FHIR history: GET /fhir/{type}/{id}/_history (a `history` Bundle, newest first) and /_history/{vid} (vread), for
the types whose versions are kept (fhir_types.VERSIONED_TYPES); a Task's history shows it was never downgraded (CAS-08)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from adapters.problems import GatewayInputError, Kind, Problem
from gateway.api.deps import SessionDep
from gateway.api.fhir_types import READABLE_TYPES, VERSIONED_TYPES, not_served, served_read, valid_id
from gateway.api.responses import FhirResponse
from gateway.api.search import handling, paging
from gateway.platform.audit import note
from gateway.platform.store.history import history, version

__all__ = ["router"]

router = APIRouter(prefix="/fhir")


def _versioned(resource_type: str, resource_id: str, current_only: bool = False) -> None:
    """Refuse a type not served, or whose versions are not kept (unless `current_only`: a vread of the current version,
    which a Location names, works for every type)."""
    if resource_type not in READABLE_TYPES:
        raise not_served(resource_type)
    valid_id(resource_id)
    if resource_type not in VERSIONED_TYPES and not current_only:
        raise GatewayInputError(
            Problem(Kind.NOT_SUPPORTED, "_history", f"versions of {resource_type} are not kept; those of {list(VERSIONED_TYPES)} are")
        )


@router.get("/{resource_type}/{resource_id}/_history", summary="Every version of a resource, newest first (a history Bundle)")
def instance_history(request: Request, resource_type: str, resource_id: str, session: SessionDep) -> Response:
    _versioned(resource_type, resource_id)
    unknown = sorted(set(request.query_params) - {"_count", "_offset", "_format"})
    if unknown and handling(request) == "strict":
        raise GatewayInputError([Problem(Kind.UNKNOWN_PARAMETER, name, "_history takes _count and _offset") for name in unknown])
    count, offset = paging(request.query_params)
    versions = history(session, resource_type, resource_id)
    if versions is None:
        raise GatewayInputError(Problem(Kind.NOT_FOUND, "id", f"{resource_type}/{resource_id} is not known"))
    page = versions[offset : offset + count]
    note(*page)
    base = str(request.base_url).rstrip("/")
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "history", "total": len(versions)}
    bundle["link"] = [{"relation": "self", "url": str(request.url)}]
    if page:
        bundle["entry"] = [_entry(base, v) for v in page]
    return FhirResponse(bundle)


def _entry(base: str, resource: dict[str, Any]) -> dict[str, Any]:
    rtype, rid, meta = resource["resourceType"], resource["id"], resource["meta"]
    created = meta["versionId"] == "1"
    return {
        "fullUrl": f"{base}/fhir/{rtype}/{rid}",
        "resource": resource,
        "request": {"method": "POST", "url": rtype} if created else {"method": "PUT", "url": f"{rtype}/{rid}"},
        "response": {
            "status": "201 Created" if created else "200 OK",
            "etag": f'W/"{meta["versionId"]}"',
            "lastModified": meta["lastUpdated"],
        },
    }


@router.get("/{resource_type}/{resource_id}/_history/{version_id}", summary="Read one version of a resource (vread)")
def vread(request: Request, resource_type: str, resource_id: str, version_id: str, session: SessionDep) -> Response:
    _versioned(resource_type, resource_id, current_only=True)
    resource, exists = version(session, resource_type, resource_id, version_id[:16])
    if not exists:
        raise GatewayInputError(Problem(Kind.NOT_FOUND, "id", f"{resource_type}/{resource_id} is not known"))
    if resource is None:
        raise GatewayInputError(Problem(Kind.NOT_FOUND, "version", f"{resource_type}/{resource_id} has no version {version_id[:16]!r}"))
    return served_read(request, resource)
