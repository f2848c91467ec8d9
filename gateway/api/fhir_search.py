"""Search on the stored types no router of their own searches (Encounter, ServiceRequest, CarePlan, Consent,
Provenance, DocumentReference, Flag, Bundle), and Task's _include/_revinclude."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy.orm import Session
from starlette.responses import Response

from adapters.problems import GatewayInputError, Kind, Problem
from gateway.api.deps import SessionDep
from gateway.api.fhir_types import READABLE_TYPES, not_served
from gateway.api.responses import FhirResponse
from gateway.api.search import Search, split_list
from gateway.api.search_params import GENERIC_TYPES
from gateway.platform.store.search_any import referring, resolve

__all__ = ["router", "task_includes"]

router = APIRouter(prefix="/fhir")

# reference search parameters kept in the token table (gateway.platform.store.writes._tokens), by type
_REFERENCE_TOKENS = {"Encounter": ("episode-of-care",), "Provenance": ("target",), "DocumentReference": ("related",)}


@router.get(
    "/{resource_type}",
    summary="Search " + ", ".join(GENERIC_TYPES) + ": _id, _lastUpdated, patient and status (where the type has them), "
    "Encounter episode-of-care, Provenance target, DocumentReference related; _count, _offset, _summary=count",
)
def generic_search(request: Request, resource_type: str, session: SessionDep) -> Response:
    if resource_type not in GENERIC_TYPES:
        raise not_served(resource_type)
    search = Search(request, resource_type)
    tokens: list[tuple[str, str | None, str]] = []
    for param in _REFERENCE_TOKENS.get(resource_type, ()):
        tokens += [(param, None, value) for value in search.getlist(param)]
    resources, total = search.resources(session, status=split_list(search.get("status")), tokens=tokens)
    return FhirResponse(search.bundle(resources, total))


def task_includes(session: Session, search: Search, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What `_include=Task:patient`, `_include=Task:focus` and `_revinclude=Provenance:target` bring with a page of
    Tasks: each resource once, none that is already a match."""
    for name, allowed in (("_include", search.spec.include), ("_revinclude", search.spec.revinclude)):
        for value in search.getlist(name):
            if value not in allowed:
                raise GatewayInputError(
                    Problem(Kind.NOT_SUPPORTED, name, f"{name}={value[:40]!r} is not served; use one of {list(allowed)}")
                )
    wanted = set(search.getlist("_include"))
    references = []
    for task in tasks:
        if "Task:patient" in wanted and (task.get("for") or {}).get("reference", "").startswith("Patient/"):
            references.append(task["for"]["reference"])
        if "Task:focus" in wanted and (task.get("focus") or {}).get("reference"):
            references.append(task["focus"]["reference"])
    included = resolve(session, references, READABLE_TYPES)
    if "Provenance:target" in search.getlist("_revinclude"):
        included += referring(session, "Provenance", "target", [f"Task/{t['id']}" for t in tasks])
    matched = {("Task", t["id"]) for t in tasks}
    out, seen = [], set()
    for resource in included:
        key = (resource["resourceType"], resource["id"])
        if key not in matched and key not in seen:
            seen.add(key)
            out.append(resource)
    return out
