"""Outcome measures over FHIR: shipped Questionnaires, QuestionnaireResponse intake, score Observations, paired summary."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from adapters.problems import GatewayInputError, Kind, Problem
from common.datetimes import LONDON, parse_source_datetime
from fhir_mapping.parameters import to_parameters
from gateway.api.deps import SessionDep, SettingsDep
from gateway.api.ingest import answer, body_of
from gateway.api.responses import FhirResponse
from gateway.api.search import Search, date_filter
from gateway.measures.outcome_summary import outcome_summary
from gateway.platform.audit import note
from gateway.platform.store.repo import ResourceQuery, get_resource, search_resources

__all__ = ["router"]

router = APIRouter(prefix="/fhir")


@router.get("/Questionnaire", summary="The shipped Questionnaires; search by url, name, code (system|code or code), _id, _lastUpdated")
def questionnaire_search(request: Request) -> Response:
    search = Search(request, "Questionnaire")
    catalogue = request.app.state.measures
    found = list(catalogue)
    if search.get("url"):
        url = search.get("url") or ""
        wanted = catalogue.find(url)
        found = [m for m in found if m is wanted and url.split("|", 1)[0] == m.url]
    if search.get("name"):
        found = [m for m in found if (search.get("name") or "").lower() in m.questionnaire.get("name", "").lower()]
    if search.get("code"):
        system, _, code = (search.get("code") or "").rpartition("|")
        found = [m for m in found if m in catalogue.by_code(system or None, code)]
    if search.ids is not None:
        found = [m for m in found if m.questionnaire["id"] in search.ids]
    resources = [m.questionnaire for m in found if _updated_within(m.questionnaire, search.last_updated)]
    page = resources[search.offset : search.offset + search.count]
    return FhirResponse(search.bundle(page, len(resources)))


def _updated_within(resource: dict[str, Any], filters: list[tuple[str, datetime]]) -> bool:
    """`_lastUpdated` on a shipped Questionnaire: its meta.lastUpdated, or its date (none: no match for a filter)."""
    if not filters:
        return True
    when = (resource.get("meta") or {}).get("lastUpdated") or resource.get("date")
    if not when:
        return False
    moment = parse_source_datetime(when) if "T" in when else datetime.fromisoformat(when).replace(tzinfo=LONDON)
    return all(getattr(moment, _COMPARE[op])(limit) for op, limit in filters)


_COMPARE = {"eq": "__eq__", "ge": "__ge__", "le": "__le__", "gt": "__gt__", "lt": "__lt__"}


@router.get("/Questionnaire/{questionnaire_id}", summary="Read a shipped Questionnaire")
def questionnaire_read(request: Request, questionnaire_id: str) -> Response:
    measure = request.app.state.measures.measures.get(questionnaire_id)
    if measure is None:
        raise GatewayInputError(Problem(Kind.NOT_FOUND, "id", f"Questionnaire/{questionnaire_id[:64]} is not known"))
    return FhirResponse(measure.questionnaire)


@router.post(
    "/QuestionnaireResponse",
    status_code=201,
    summary="Submit a completed measure: checked against its Questionnaire, scored, stored with score Observations",
    description="Scope `measures:write`. Checked against its shipped Questionnaire (PHQ-9, GAD-7, ...), scored, and "
    "stored with one Observation per score (risk items flagged); 201 with the stored resources, 422 OperationOutcome "
    "naming the item when it does not fit.",
    openapi_extra=body_of("application/fhir+json", "a QuestionnaireResponse", "measures/phq-9-lhc-forms.qr.json"),
)
async def questionnaire_response_create(request: Request, settings: SettingsDep) -> Response:
    return await answer(request, settings.max_body_bytes, request.app.state.responses.receive)


@router.get(
    "/QuestionnaireResponse", summary="Search responses: patient, questionnaire (canonical URL), _id, _lastUpdated, _count, _offset"
)
def questionnaire_response_search(request: Request, session: SessionDep) -> Response:
    search = Search(request, "QuestionnaireResponse")
    tokens: list[tuple[str, str | None, str]] = [
        ("questionnaire", None, value.split("|", 1)[0]) for value in search.getlist("questionnaire")
    ]
    resources, total = search.resources(session, tokens=tokens)
    return FhirResponse(search.bundle(resources, total))


@router.get(
    "/Observation", summary="Search score Observations: patient, code (system|code), date (ge/le/gt/lt/eq prefixes), _id, _lastUpdated"
)
def observation_search(request: Request, session: SessionDep) -> Response:
    search = Search(request, "Observation")
    tokens = []
    for value in search.getlist("code"):
        system, _, code = value.rpartition("|")
        tokens.append(("code", system or None, code))
    dates = [date_filter(value) for value in search.getlist("date")]
    resources, total = search.resources(session, tokens=tokens, dates=dates)
    return FhirResponse(search.bundle(resources, total))


@router.get(
    "/Patient/{patient_id}/$outcome-summary",
    summary="Paired measures as Parameters: first/latest, change, reliable improvement, recovery, TT-11 data set",
)
def patient_outcome_summary(request: Request, patient_id: str, session: SessionDep) -> Response:
    patient = get_resource(session, "Patient", patient_id)
    if patient is None:
        raise GatewayInputError(Problem(Kind.NOT_FOUND, "id", f"Patient/{patient_id[:64]} is not known"))
    note(patient)
    observations, _ = search_resources(session, ResourceQuery("Observation", patient=patient_id, count=10_000))
    responses, _ = search_resources(session, ResourceQuery("QuestionnaireResponse", patient=patient_id, count=10_000))
    return FhirResponse(to_parameters(outcome_summary(patient_id, observations, responses, request.app.state.measures)))
