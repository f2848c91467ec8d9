"""QuestionnaireResponse intake: check against the Questionnaire, score, store with Observations, act on risk.

A PHQ-9 item 9 (or any measure's risk item) answered over its threshold is never lost:
in the same transaction as the response, the patient's open CAS Task becomes Urgent CN
Review (CAS-04/CAS-10), or, with no open case, a Flag is raised on the patient.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.orm import Session, sessionmaker

from adapters.jsonparse import parse_json_object
from adapters.problems import GatewayInputError, Kind, Problem
from adapters.referral import check_nhs_number
from fhir_mapping import codes
from fhir_mapping.bundles import bundle_of
from fhir_mapping.datetimes import OffsetMissing, parse_source_datetime, to_fhir_instant
from fhir_mapping.fhir import Patient, build, to_json_dict
from fhir_mapping.ids import resource_id
from fhir_mapping.measures import MeasureCatalogue
from fhir_mapping.replies import batch_response
from fhir_mapping.score_resources import escalate_task, risk_flag, score_observations, stored_response
from fhir_mapping.scoring import ScoredResponse, check_response, read_response, score_answers
from gateway.clock import Clock
from gateway.messages import Inbound, Reply, commit_message, previous, resend_or_refuse
from gateway.store.repo import find_by_identifier, get_resource, open_cas_tasks

__all__ = ["ResponseIntake", "score_offline", "CHANNEL_RESPONSES", "response_resources", "response_id"]

log = structlog.get_logger("iap.responses")
CHANNEL_RESPONSES = "questionnaire-response"


def _parse(raw: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """The response as sent (its id and answers are read from that) and as its FHIR model writes it (what is stored)."""
    qr = parse_json_object(raw, "QuestionnaireResponse")
    if qr.get("resourceType") != "QuestionnaireResponse":
        raise GatewayInputError(
            Problem(Kind.STRUCTURE, "resourceType", f"expected a QuestionnaireResponse, got {str(qr.get('resourceType'))[:40]!r}")
        )
    as_fhir, problems = read_response(qr)
    if problems:
        raise GatewayInputError(problems)
    authored = qr.get("authored")
    if not authored:
        raise GatewayInputError(
            Problem(Kind.REQUIRED, "QuestionnaireResponse.authored", "authored (when the measure was completed) is required")
        )
    try:
        parse_source_datetime(authored)
    except OffsetMissing as exc:
        raise GatewayInputError(Problem(Kind.VALUE, "QuestionnaireResponse.authored", f"dates must carry a timezone: {exc}")) from None
    except ValueError as exc:
        raise GatewayInputError(Problem(Kind.VALUE, "QuestionnaireResponse.authored", str(exc))) from None
    return qr, as_fhir


def response_id(qr: dict[str, Any]) -> str:
    """Stable id: from the sender's identifier when given, else from the content (an identical re-post is a re-send)."""
    ident = qr.get("identifier") or {}
    if ident.get("system") and ident.get("value"):
        return resource_id("QuestionnaireResponse", ident["system"], ident["value"])
    digest = hashlib.sha256(json.dumps(qr, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return resource_id("QuestionnaireResponse", "sha256", digest)


def _notes(scored: ScoredResponse) -> list[Problem]:
    """Scores not computed (and why) or derived (prorated), and risks raised: information for the sender."""
    out = [
        Problem(Kind.UNPROCESSABLE, f"{scored.measure.spec.title}.{s.spec.id}", s.note, severity="information")
        for s in scored.scores
        if s.note
    ]
    out += [
        Problem(Kind.BUSINESS_RULE, f"QuestionnaireResponse.item.where(linkId='{r.link_id}')", f"risk: {r.reason}", severity="information")
        for r in scored.risks
    ]
    return out


def response_resources(
    qr: dict[str, Any],
    scored: ScoredResponse,
    qr_id: str,
    subject: dict[str, str],
    encounter: dict[str, str] | None,
    now: datetime,
    open_tasks: list[dict[str, Any]] | None,
) -> list[dict[str, Any]]:
    """What the gateway stores for one response: the response, its score Observations, and the risk action."""
    effective = to_fhir_instant(parse_source_datetime(qr["authored"]))
    resources = [stored_response(qr, scored, qr_id, subject, encounter), *score_observations(scored, qr_id, subject, encounter, effective)]
    for hit in scored.risks:
        if open_tasks:
            resources += [escalate_task(task, scored, hit, qr_id, now) for task in open_tasks]
            open_tasks = [r for r in resources if r["resourceType"] == "Task"]  # a second hit builds on the first
        else:
            resources.append(risk_flag(scored, hit, qr_id, subject, encounter, effective))
    # one resource per id (several risk hits on one Task: keep the last, which carries every reason)
    by_key = {f"{r['resourceType']}/{r['id']}": r for r in resources}
    return list(by_key.values())


def score_offline(raw: bytes, catalogue: MeasureCatalogue, now: datetime) -> dict[str, Any]:
    """`iap-gateway score FILE`: what the gateway would store for this response (no CAS case known: risk -> Flag)."""
    qr, as_fhir = _parse(raw)
    measure, answers = check_response(qr, catalogue)
    scored = score_answers(measure, answers)
    subject = _subject_offline(qr)
    encounter = qr.get("encounter") if isinstance(qr.get("encounter"), dict) and qr["encounter"].get("reference") else None
    qr_id = response_id(qr)
    resources = response_resources(as_fhir, scored, qr_id, subject, encounter, now, None)
    return bundle_of(resources, "collection", resource_id("Bundle", "score", qr_id), to_fhir_instant(now))


def _subject_offline(qr: dict[str, Any]) -> dict[str, str]:
    subject = qr.get("subject") or {}
    if isinstance(subject.get("reference"), str) and subject["reference"].startswith("Patient/"):
        return {"reference": subject["reference"]}
    nhs = _nhs_number(subject)
    return {"reference": f"Patient/{resource_id('Patient', codes.NHS_NUMBER, nhs)}"}


def _nhs_number(subject: dict[str, Any]) -> str:
    ident = subject.get("identifier") or {}
    if ident.get("system") != codes.NHS_NUMBER:
        raise GatewayInputError(
            Problem(
                Kind.REQUIRED,
                "QuestionnaireResponse.subject",
                f"subject must be a Patient reference (Patient/<id>) or an identifier {codes.NHS_NUMBER}|<NHS number>",
            )
        )
    nhs, reason = check_nhs_number(ident.get("value"))
    if reason:
        raise GatewayInputError(Problem(Kind.VALUE, "QuestionnaireResponse.subject.identifier.value", reason))
    assert nhs is not None
    return nhs


class ResponseIntake:
    def __init__(self, sessions: sessionmaker[Session], catalogue: MeasureCatalogue, clock: Clock) -> None:
        self.sessions = sessions
        self.catalogue = catalogue
        self.clock = clock

    def receive(self, raw: bytes) -> Reply:
        qr, as_fhir = _parse(raw)
        qr_id = response_id(qr)
        original = previous(self.sessions, CHANNEL_RESPONSES, qr_id)
        if original is not None:
            return resend_or_refuse(original, raw, "QuestionnaireResponse.identifier")
        measure, answers = check_response(qr, self.catalogue)
        scored = score_answers(measure, answers)
        now = self.clock.now()
        with self.sessions() as session:
            subject, new_patient = self._subject(session, qr)
            encounter = self._encounter(session, qr, subject)

        def write(session: Session) -> list[tuple[dict[str, Any], str | None]]:
            open_tasks = open_cas_tasks(session, subject["reference"].split("/", 1)[1]) if scored.risks else None
            resources = ([new_patient] if new_patient else []) + response_resources(
                as_fhir, scored, qr_id, subject, encounter, now, open_tasks
            )
            return [(r, None) for r in resources]

        def make_reply(stored: list[dict[str, Any]], created: set[str]) -> Reply:
            ordered = [r for r in stored if r["resourceType"] != "Patient"] + [r for r in stored if r["resourceType"] == "Patient"]
            body = batch_response(ordered, created, _notes(scored), resource_id("Bundle", "qr-reply", qr_id))
            version = next(r["meta"]["versionId"] for r in stored if r["resourceType"] == "QuestionnaireResponse")
            return Reply(201, body, {"Location": f"/fhir/QuestionnaireResponse/{qr_id}/_history/{version}"})

        again = lambda racing: resend_or_refuse(racing, raw, "QuestionnaireResponse.identifier")  # noqa: E731
        reply = commit_message(self.sessions, Inbound(CHANNEL_RESPONSES, qr_id, raw), now, write, make_reply, on_race=again)
        if not reply.duplicate:
            log.info(
                "response.accepted",
                measure=measure.id,
                scores=[s.spec.id for s in scored.scores if s.value is not None],
                risks=len(scored.risks),
                escalated=sum(1 for e in reply.body["entry"] if e["resource"]["resourceType"] == "Task"),
            )
        return reply

    def _subject(self, session: Session, qr: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any] | None]:
        """The Patient reference; a patient known only by NHS number is created (minimal, same id as the 111 mapping)."""
        subject = qr.get("subject") or {}
        reference = subject.get("reference")
        if isinstance(reference, str):
            rtype, _, rid = reference.partition("/")
            if rtype != "Patient" or get_resource(session, "Patient", rid) is None:
                raise GatewayInputError(
                    Problem(Kind.BUSINESS_RULE, "QuestionnaireResponse.subject", f"{reference[:80]} is not a known Patient")
                )
            return {"reference": reference}, None
        nhs = _nhs_number(subject)
        found = find_by_identifier(session, "Patient", codes.NHS_NUMBER, nhs)
        if found:
            return {"reference": f"Patient/{found[0]['id']}"}, None
        patient_id = resource_id("Patient", codes.NHS_NUMBER, nhs)
        patient = to_json_dict(
            build(
                Patient,
                id=patient_id,
                meta={"profile": [f"{codes.UKCORE}Patient"]},
                identifier=[{"system": codes.NHS_NUMBER, "value": nhs}],
            )
        )
        return {"reference": f"Patient/{patient_id}"}, patient

    def _encounter(self, session: Session, qr: dict[str, Any], subject: dict[str, str]) -> dict[str, str] | None:
        """The Encounter, which must be known and be the same patient's ("a response for a different patient" is refused)."""
        reference = (qr.get("encounter") or {}).get("reference")
        if not reference:
            return None
        rtype, _, rid = str(reference).partition("/")
        encounter = get_resource(session, "Encounter", rid) if rtype == "Encounter" else None
        if encounter is None:
            raise GatewayInputError(
                Problem(Kind.BUSINESS_RULE, "QuestionnaireResponse.encounter", f"{str(reference)[:80]} is not a known Encounter")
            )
        if (encounter.get("subject") or {}).get("reference") != subject["reference"]:
            raise GatewayInputError(
                Problem(
                    Kind.BUSINESS_RULE,
                    "QuestionnaireResponse.encounter",
                    f"{reference} is another patient's encounter: the response's subject and its encounter's subject differ",
                )
            )
        return {"reference": str(reference)}
