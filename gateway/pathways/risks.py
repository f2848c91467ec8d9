"""Issue 33 (a risk answer is never lost): the responses a refused pathway referral carries have their risk answers acted
on all the same, as a refused QuestionnaireResponse's are (gateway.measures.responses): the patient's open CAS case escalated to
Urgent CN Review (CAS-10, CAS-04), or a Flag raised; the refusal's warnings say what was done, or why not."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from adapters.jsonparse import parse_json_object
from adapters.problems import GatewayInputError, Problem
from adapters.referral import check_nhs_number
from common import codes
from fhir_mapping.ids import resource_id
from gateway.measures.responses import ResponseIntake, response_id
from gateway.platform.store.repo import find_by_identifier

__all__ = ["refused_referral_risks"]


def refused_referral_risks(intake: ResponseIntake, raw: bytes) -> list[Problem]:
    """The refused referral's contained responses, each acted on for its risk answers; the warnings naming them by their
    place in the referral. The patient is the contained Patient's NHS number (as an accepted referral's); the response
    ids are those the accepted referral would have stored, so a corrected re-send finds the Flag already raised."""
    try:
        body = parse_json_object(raw, "ServiceRequest")
    except GatewayInputError:
        return []  # not JSON: no answer can be read
    contained = [r for r in body.get("contained") or [] if isinstance(r, dict)] if isinstance(body.get("contained"), list) else []
    responses = [r for r in contained if r.get("resourceType") == "QuestionnaireResponse"]
    if not responses:
        return []
    given = _nhs_number(body, contained)
    nhs = check_nhs_number(given)[0] or given  # as an accepted referral normalises it; an invalid one is refused below
    patient_id = resource_id("Patient", codes.NHS_NUMBER, nhs)
    if nhs != given or check_nhs_number(given)[0]:
        with intake.sessions() as session:  # an EPR-registered patient keeps its own id (gateway.pathways.records._patient)
            held = find_by_identifier(session, "Patient", codes.NHS_NUMBER, nhs)
            patient_id = held[0]["id"] if held else patient_id
    out: list[Problem] = []
    for qr in responses:
        as_sent = {k: v for k, v in qr.items() if k != "id"}
        # the id an accepted referral gives it (gateway.pathways.service: the subject is the patient the NHS number names)
        qr_id = response_id(as_sent | {"subject": {"reference": f"Patient/{patient_id}"}})
        subject = {"identifier": {"system": codes.NHS_NUMBER, "value": nhs}}
        where = f"ServiceRequest.contained.where(id='{str(qr.get('id'))[:64]}')"
        for problem in intake.act_on_refused_risks({k: v for k, v in as_sent.items() if k != "encounter"} | {"subject": subject}, qr_id):
            element = problem.element.replace("QuestionnaireResponse", where, 1) if problem.element else where
            out.append(replace(problem, element=element))
    return out


def _nhs_number(body: dict[str, Any], contained: list[dict[str, Any]]) -> str:
    """The NHS number of the referral's subject (its contained Patient), as given: checked where it is used."""
    subject = body.get("subject")
    ref = subject.get("reference") if isinstance(subject, dict) else None
    patient: dict[str, Any] = next((r for r in contained if r.get("resourceType") == "Patient" and f"#{r.get('id')}" == ref), {})
    given = patient.get("identifier")
    idents: list[Any] = given if isinstance(given, list) else []
    value = next((i.get("value") for i in idents if isinstance(i, dict) and i.get("system") == codes.NHS_NUMBER), None)
    return value if isinstance(value, str) else ""
