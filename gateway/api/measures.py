"""Outcome measures over FHIR: shipped Questionnaires, QuestionnaireResponse intake, score Observations, paired summary."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from adapters.problems import GatewayInputError, Kind, Problem
from gateway.api.deps import SessionDep, SettingsDep
from gateway.api.ingest import answer, body_of
from gateway.api.responses import FhirResponse
from gateway.api.search import date_filter, paging, refuse_unknown, searchset
from gateway.audit import note
from gateway.outcome_summary import outcome_summary
from gateway.store.repo import ResourceQuery, get_resource, search_resources

__all__ = ["router"]

router = APIRouter(prefix="/fhir")


@router.get("/Questionnaire", summary="The shipped Questionnaires; search by url, name or code (system|code or code)")
def questionnaire_search(request: Request) -> Response:
    params = request.query_params
    refuse_unknown(params.keys(), {"url", "name", "code", "_format"}, "Questionnaire")
    catalogue = request.app.state.measures
    found = list(catalogue)
    if params.get("url"):
        wanted = catalogue.find(params["url"])
        found = [m for m in found if m is wanted and params["url"].split("|", 1)[0] == m.url]
    if params.get("name"):
        found = [m for m in found if params["name"].lower() in m.questionnaire.get("name", "").lower()]
    if params.get("code"):
        system, _, code = params["code"].rpartition("|")
        found = [m for m in found if m in catalogue.by_code(system or None, code)]
    resources = [m.questionnaire for m in found]
    return FhirResponse(searchset(request, resources, len(resources), max(len(resources), 1), 0))


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
    openapi_extra=body_of("application/fhir+json", "a QuestionnaireResponse"),
)
async def questionnaire_response_create(request: Request, settings: SettingsDep) -> Response:
    return await answer(request, settings.max_body_bytes, request.app.state.responses.receive)


@router.get("/QuestionnaireResponse", summary="Search responses: patient, questionnaire (canonical URL), _count, _offset")
def questionnaire_response_search(request: Request, session: SessionDep) -> Response:
    params = request.query_params
    refuse_unknown(params.keys(), {"patient", "questionnaire", "_count", "_offset", "_format"}, "QuestionnaireResponse")
    count, offset = paging(params)
    tokens: list[tuple[str, str | None, str]] = (
        [("questionnaire", None, params["questionnaire"].split("|", 1)[0])] if params.get("questionnaire") else []
    )
    query = ResourceQuery("QuestionnaireResponse", patient=params.get("patient"), tokens=tokens, count=count, offset=offset)
    resources, total = search_resources(session, query)
    return FhirResponse(searchset(request, resources, total, count, offset))


@router.get("/Observation", summary="Search score Observations: patient, code (system|code), date (ge/le/gt/lt/eq prefixes)")
def observation_search(request: Request, session: SessionDep) -> Response:
    params = request.query_params
    refuse_unknown(params.keys(), {"patient", "code", "date", "_count", "_offset", "_format"}, "Observation")
    count, offset = paging(params)
    tokens = []
    for value in params.getlist("code"):
        system, _, code = value.rpartition("|")
        tokens.append(("code", system or None, code))
    dates = [date_filter(value) for value in params.getlist("date")]
    query = ResourceQuery("Observation", patient=params.get("patient"), tokens=tokens, dates=dates, count=count, offset=offset)
    resources, total = search_resources(session, query)
    return FhirResponse(searchset(request, resources, total, count, offset))


@router.get(
    "/Patient/{patient_id}/$outcome-summary",
    summary="Paired measures: first/latest, change, reliable improvement, recovery, TT-11 data set",
)
def patient_outcome_summary(request: Request, patient_id: str, session: SessionDep) -> Response:
    patient = get_resource(session, "Patient", patient_id)
    if patient is None:
        raise GatewayInputError(Problem(Kind.NOT_FOUND, "id", f"Patient/{patient_id[:64]} is not known"))
    note(patient)
    observations, _ = search_resources(session, ResourceQuery("Observation", patient=patient_id, count=10_000))
    responses, _ = search_resources(session, ResourceQuery("QuestionnaireResponse", patient=patient_id, count=10_000))
    return FhirResponse(outcome_summary(patient_id, observations, responses, request.app.state.measures))
