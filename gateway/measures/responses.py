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
from common import codes
from common.datetimes import OffsetMissing, parse_source_datetime, to_fhir_instant
from fhir_mapping.bundles import bundle_of
from fhir_mapping.fhir import Patient, build, to_json_dict
from fhir_mapping.ids import resource_id
from fhir_mapping.measures import MeasureCatalogue
from fhir_mapping.replies import batch_response
from fhir_mapping.score_resources import (
    REFUSED,
    escalate_task,
    names_risk,
    risk_flag,
    risk_summary,
    score_observations,
    stored_response,
)
from fhir_mapping.scoring import RiskHit, ScoredResponse, check_response, item_path, read_response, risk_answers, score_answers
from gateway.cas.cases import provenance
from gateway.platform.clock import Clock
from gateway.platform.messages import Inbound, Reply, commit_message, previous, resend_or_refuse
from gateway.platform.store.db import write_transaction
from gateway.platform.store.repo import find_by_identifier, get_for_update, get_resource, open_cas_tasks, put_resource

__all__ = ["ResponseIntake", "score_offline", "CHANNEL_RESPONSES", "response_resources", "response_id", "risk_actions"]

log = structlog.get_logger("iap.responses")
CHANNEL_RESPONSES = "questionnaire-response"


def _parse(raw: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """The response as sent (its id and answers are read from that) and as its FHIR model writes it (what is stored)."""
    qr = _response_object(raw)
    return qr, _checked(qr)


def _response_object(raw: bytes) -> dict[str, Any]:
    qr = parse_json_object(raw, "QuestionnaireResponse")
    if qr.get("resourceType") != "QuestionnaireResponse":
        raise GatewayInputError(
            Problem(Kind.STRUCTURE, "resourceType", f"expected a QuestionnaireResponse, got {str(qr.get('resourceType'))[:40]!r}")
        )
    return qr


def _risk_problem(hit: RiskHit, what: str) -> Problem:
    return Problem(Kind.BUSINESS_RULE, item_path(hit.link_id), f"risk: {hit.reason}, answered '{hit.answer_display}': {what}", "warning")


def _checked(qr: dict[str, Any]) -> dict[str, Any]:
    """The response as its FHIR model writes it (what is stored), with `authored` checked."""
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
    return as_fhir


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
    return resources + risk_actions(scored, scored.risks, qr_id, subject, encounter, effective, now, open_tasks)


def risk_actions(
    scored: ScoredResponse,
    hits: list[RiskHit],
    qr_id: str,
    subject: dict[str, str],
    encounter: dict[str, str] | None,
    effective: str,
    now: datetime,
    open_tasks: list[dict[str, Any]] | None,
    refused: bool = False,
) -> list[dict[str, Any]]:
    """CAS-10 (CAS-04): each open CAS Task escalated to Urgent CN Review, with a Provenance for $explain naming the rule,
    the answers and the scoring-file setting that decided; with no open case, a Flag per risk item. A Task already
    carrying this response's reason for an item (a re-send) is not escalated again for it."""
    resources: list[dict[str, Any]] = []
    escalated: dict[str, tuple[dict[str, Any], list[RiskHit]]] = {}
    for hit in hits:
        if open_tasks:
            for task in open_tasks:
                current, done = escalated.get(task["id"], (task, []))  # a second hit builds on the first
                if not names_risk(current, qr_id, hit):
                    escalated[task["id"]] = (escalate_task(current, scored, hit, qr_id, now, refused), [*done, hit])
        else:
            resources.append(risk_flag(scored, hit, qr_id, subject, encounter, effective, refused))
    for task, task_hits in escalated.values():
        why = risk_summary(scored, task_hits) + (f" ({REFUSED.format(qr_id=qr_id)})" if refused else f" (QuestionnaireResponse/{qr_id})")
        resources += [task, provenance(task, "risk-escalation", "IAP gateway", ("CAS-10", "CAS-04"), why, now, policy=scored.measure.url)]
    return resources


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
        """Take a response; if it is refused, its risk answers are acted on all the same, and the refusal says how."""
        qr = _response_object(raw)
        qr_id = response_id(qr)
        original = previous(self.sessions, CHANNEL_RESPONSES, qr_id)
        if original is not None:
            return resend_or_refuse(original, raw, "QuestionnaireResponse.identifier")
        try:
            return self._take(raw, qr, qr_id)
        except GatewayInputError as refused:
            hits = risk_answers(qr, self.catalogue)
            if not hits:
                raise
            raise GatewayInputError([*refused.problems, *self._act_on_refused(qr, qr_id, hits)], stage=refused.stage) from None

    def act_on_refused_risks(self, qr: dict[str, Any], qr_id: str) -> list[Problem]:
        """A response another message carried (a pathway referral's contained one) when that message is refused: its risk
        answers acted on as `receive` acts on a refused response's; the warnings saying so (none without a risk answer)."""
        hits = risk_answers(qr, self.catalogue)
        return self._act_on_refused(qr, qr_id, hits) if hits else []

    def _act_on_refused(self, qr: dict[str, Any], qr_id: str, hits: list[RiskHit]) -> list[Problem]:
        """Issue 33: a risk answer is never lost. In its own (audited) transaction, the risk items of a refused response
        escalate the patient's open CAS case (CAS-10) or raise a Flag; a re-send finds them done (deterministic ids,
        `names_risk`). Not acted on only when the response names no known patient, or two (subject and encounter)."""
        measure = self.catalogue.find(str(qr["questionnaire"]))
        assert measure is not None  # risk_answers found it
        scored = ScoredResponse(measure, {}, risks=hits)
        now = self.clock.now()
        try:
            effective = to_fhir_instant(parse_source_datetime(str(qr.get("authored"))))
        except (OffsetMissing, ValueError):
            effective = to_fhir_instant(now)
        done: list[str] = []
        try:
            with write_transaction(self.sessions) as session:
                subject, new_patient = self._subject(session, qr)
                self._encounter_if_known(session, qr, subject)
                open_tasks = open_cas_tasks(session, subject["reference"].split("/", 1)[1])
                services = {f"Task/{t['id']}": (get_for_update(session, "Task", t["id"]) or ({}, None))[1] for t in open_tasks}
                for resource in risk_actions(scored, hits, qr_id, subject, None, effective, now, open_tasks, refused=True):
                    key = f"{resource['resourceType']}/{resource['id']}"
                    if resource["resourceType"] == "Flag" and get_resource(session, "Flag", resource["id"]) is not None:
                        done.append(f"{key} (raised when this response was first sent)")
                        continue
                    if new_patient:
                        put_resource(session, new_patient, now)
                        new_patient = None
                    target = resource["target"][0]["reference"] if resource["resourceType"] == "Provenance" else None
                    put_resource(session, resource, now, services.get(target or ""))  # a case's record: the case's service
                    if resource["resourceType"] != "Provenance":
                        done.append(f"{key} ({'Urgent CN Review, CAS-10' if resource['resourceType'] == 'Task' else 'raised'})")
                if not done:
                    done = [f"{t['resourceType']}/{t['id']} (escalated when this response was first sent)" for t in open_tasks]
        except GatewayInputError as why:
            reason = why.first_error.message if why.first_error else "the response's patient is not known"
            log.warning("response.refused.risk_not_acted_on", measure=measure.id, risks=len(hits))
            return [_risk_problem(hit, f"NOT acted on: {reason}; correct the response and send it again") for hit in hits]
        log.info("response.refused.risk_acted_on", measure=measure.id, risks=len(hits), actions=len(done))
        acted = "acted on although this response is refused (the response itself is not stored): " + ", ".join(done)
        return [_risk_problem(hit, acted) for hit in hits]

    def _encounter_if_known(self, session: Session, qr: dict[str, Any], subject: dict[str, str]) -> None:
        """A refused response's encounter: an unknown one is ignored, another patient's makes the patient uncertain."""
        try:
            self._encounter(session, qr, subject)
        except GatewayInputError as why:
            if "another patient's" in (why.first_error.message if why.first_error else ""):
                raise

    def _take(self, raw: bytes, qr: dict[str, Any], qr_id: str) -> Reply:
        as_fhir = _checked(qr)
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
