"""Which search parameters each searchable FHIR type takes: the one table the search routes check requests
against and the CapabilityStatement is written from (so what is advertised is what is served)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.platform.store.repo import sortable_task_params

__all__ = ["SearchSpec", "SEARCHES", "RESULT_PARAMS", "COMMON", "GENERIC_TYPES"]

# every stored type can be found by its id and by when it last changed (the resources table's columns)
COMMON = {"_id": "token", "_lastUpdated": "date"}
# result parameters every search takes: paging, the count-only summary, the format (JSON only: fhir_http.py)
RESULT_PARAMS = {"_count": "number", "_offset": "number", "_summary": "token", "_format": "token"}


@dataclass(frozen=True)
class SearchSpec:
    """A type's search: its parameters (name -> FHIR search parameter type), sort keys, _include and _revinclude."""

    params: dict[str, str]
    sort: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    revinclude: tuple[str, ...] = ()
    note: str | None = None  # the CapabilityStatement's documentation of the type's search

    @property
    def all_params(self) -> dict[str, str]:
        """Every parameter a request may name (as the CapabilityStatement lists them)."""
        out = COMMON | self.params | RESULT_PARAMS
        if self.sort:
            out["_sort"] = "string"
        return out

    @property
    def allowed(self) -> set[str]:
        return set(self.all_params) | ({"_include"} if self.include else set()) | ({"_revinclude"} if self.revinclude else set())


_PATIENT = {"patient": "reference"}
_STATUS = {"status": "token"}

# the stored types no route of their own searches: gateway.api.fhir_search serves them from the resources table
GENERIC_TYPES: dict[str, SearchSpec] = {
    "ServiceRequest": SearchSpec(_PATIENT | _STATUS),
    "Encounter": SearchSpec(_PATIENT | _STATUS | {"episode-of-care": "reference"}),
    "Flag": SearchSpec(_PATIENT | _STATUS),
    "CarePlan": SearchSpec(_PATIENT | _STATUS),
    "Consent": SearchSpec(_PATIENT | _STATUS),
    "Provenance": SearchSpec({"target": "reference"}),
    "DocumentReference": SearchSpec(_PATIENT | _STATUS | {"related": "reference"}),
    "Bundle": SearchSpec({}),
}

SEARCHES: dict[str, SearchSpec] = {
    "Task": SearchSpec(
        {"status": "token", "business-status": "token", "patient": "reference", "priority": "token"},
        sort=tuple(sortable_task_params()),
        include=("Task:patient", "Task:focus"),
        revinclude=("Provenance:target",),
    ),
    "Patient": SearchSpec(
        {"identifier": "token"}, note="A Patient search names identifier, _id or _lastUpdated (no browsing of all patients)."
    ),
    "Questionnaire": SearchSpec({"url": "uri", "name": "string", "code": "token"}),
    "QuestionnaireResponse": SearchSpec(_PATIENT | {"questionnaire": "reference"}),
    "Observation": SearchSpec(_PATIENT | {"code": "token", "date": "date"}),
    "CommunicationRequest": SearchSpec(_PATIENT | _STATUS),
    "EpisodeOfCare": SearchSpec(_PATIENT | _STATUS | {"service": "token"}),
    "AuditEvent": SearchSpec(
        {
            "date": "date",
            "agent": "token",
            "entity": "reference",
            "patient": "reference",
            "outcome": "token",
            "action": "token",
            "subtype": "token",
        },
        sort=("date",),
    ),
    **GENERIC_TYPES,
}
