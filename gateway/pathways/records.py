"""What the pathway intake reads from the store for a referral (its patient, DIALOG+ care plans, a WSAS on file) and
the resources and reply it builds from a routing decision (episode, screening Task, onward referral, letters)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from adapters.pathway_referral import PathwayReferral
from adapters.problems import GatewayInputError, Kind, Problem
from common import codes
from common.datetimes import parse_source_datetime, to_fhir_instant
from fhir_mapping.episodes import (
    STEP_DISPLAY,
    episode_of_care,
    letter_request,
    pathway_task,
    transfer_request,
    with_clocks,
)
from fhir_mapping.fhir import to_json_dict
from fhir_mapping.ids import resource_id
from fhir_mapping.measures import MeasureCatalogue
from fhir_mapping.patients import merge_patient, patient_resource
from gateway.letters.outbox.letters import queue_letter
from gateway.pathways.rules.clocks import start_clock
from gateway.pathways.rules.routing import Decision, MeasureFact
from gateway.pathways.rules.schema import PrimaryCareRules, TalkingTherapiesRules
from gateway.pathways.rules.steps import (
    Letter,
)
from gateway.platform.store.repo import ResourceQuery, find_by_identifier, get_resource, put_resource, search_resources

__all__ = ["PATHWAY_ACTIVITY", "CONTACT_SYSTEM", "Rules", "wsas_on_file"]

PATHWAY_ACTIVITY = f"{codes.GATEWAY_BASE}/CodeSystem/pathway-operation"
CONTACT_SYSTEM = f"{codes.GATEWAY_BASE}/CodeSystem/pathway-contact"
OUTCOME_SYSTEM = f"{codes.GATEWAY_BASE}/CodeSystem/contact-outcome"
STEP_SYSTEM = f"{codes.GATEWAY_BASE}/CodeSystem/pathway-step"
CARE_PLAN_CATEGORY = f"{codes.GATEWAY_BASE}/CodeSystem/care-plan-category"
Rules = PrimaryCareRules | TalkingTherapiesRules


def _score_codes(catalogue: MeasureCatalogue) -> dict[tuple[str | None, str], tuple[str, str]]:
    """(system, code) of each score's first code -> (measure id, score id): to read stored Observations back."""
    out: dict[tuple[str | None, str], tuple[str, str]] = {}
    for measure in catalogue:
        for spec in measure.spec.scores:
            for code in spec.codes:
                out.setdefault((code.system, code.code), (measure.id, spec.id))
    return out


def _contained(resource: dict[str, Any]) -> str:
    """Where a contained resource sits in the referral, as FHIRPath (what a refusal names)."""
    return f"ServiceRequest.contained.where(id='{str(resource.get('id'))[:64]}')"


def _patient(session: Session, referral: PathwayReferral) -> dict[str, Any]:
    """The referral's Patient merged over the stored one: the Patient holding its NHS number if there is one (a patient an
    EPR registered by its local number keeps its id, issue 32), else the one the NHS number's id names."""
    update = to_json_dict(patient_resource(referral.patient, referral.gp_practice))
    nhs = [i["value"] for i in update.get("identifier", []) if i.get("system") == codes.NHS_NUMBER]
    held = find_by_identifier(session, "Patient", codes.NHS_NUMBER, nhs[0]) if nhs else []
    if held:
        update["id"] = held[0]["id"]
    return merge_patient(held[0] if held else get_resource(session, "Patient", update["id"]), update)


def _dialog_plus_times(session: Session, patient_id: str, since: datetime | None, pending: Sequence[dict[str, Any]] = ()) -> list[datetime]:
    """When each DIALOG+ care plan in force (PC-09: MHS008 and MHS009 recorded -> active) was created (`pending`: care
    plans about to be written in this transaction count too)."""
    plans, _ = search_resources(session, ResourceQuery("CarePlan", patient=patient_id, status=["active"], count=1000))
    plans += [p for p in _pending_of(pending, "CarePlan", patient_id) if p.get("status") == "active"]
    out = []
    for plan in plans:
        if any(c.get("code") == "dialog-plus" for cat in plan.get("category", []) for c in cat.get("coding", [])):
            created = plan.get("created") or (plan.get("period") or {}).get("start")
            moment = parse_source_datetime(created) if isinstance(created, str) and "T" in created else None
            if moment is not None and (since is None or moment >= since):
                out.append(moment)
            elif moment is None and since is None:
                out.append(datetime.min)
    return out


def _pending_of(pending: Sequence[dict[str, Any]], resource_type: str, patient_id: str) -> list[dict[str, Any]]:
    return [r for r in pending if r["resourceType"] == resource_type and r.get("subject", {}).get("reference") == f"Patient/{patient_id}"]


def _dialog_plus_in_force(session: Session, patient_id: str, named: tuple[str, ...]) -> bool:
    """PC-06/PC-09: a DIALOG+ care plan is in force for the patient (a CarePlan named in the referral must be one)."""
    for plan_id in named:
        plan = get_resource(session, "CarePlan", plan_id)
        if plan is None or plan.get("status") != "active":
            raise GatewayInputError(
                Problem(Kind.VALUE, "ServiceRequest.supportingInfo", f"CarePlan/{plan_id[:64]} is not a care plan in force (PC-09)")
            )
    plans, _ = search_resources(session, ResourceQuery("CarePlan", patient=patient_id, status=["active"], count=1000))
    return any(c.get("code") == "dialog-plus" for p in plans for cat in p.get("category", []) for c in cat.get("coding", []))


def wsas_on_file(
    session: Session, score_codes: dict[tuple[str | None, str], tuple[str, str]], patient_id: str, referred: datetime, rules: Rules
) -> MeasureFact | None:
    """TT-07: the patient's latest WSAS total on file, completed within `functioning_on_file_within` before the referral."""
    if not isinstance(rules, TalkingTherapiesRules):
        return None
    since = referred - rules.functioning_on_file_within
    observations, _ = search_resources(session, ResourceQuery("Observation", patient=patient_id, count=10_000))
    found: list[tuple[datetime, float, str]] = []
    for obs in observations:
        coding: dict[str, Any] = next(iter(obs["code"].get("coding", [])), {})
        if score_codes.get((coding.get("system"), str(coding.get("code")))) == ("wsas", "total") and obs.get("effectiveDateTime"):
            when = parse_source_datetime(obs["effectiveDateTime"])
            if since <= when <= referred and (obs.get("valueQuantity") or {}).get("value") is not None:
                found.append((when, float(obs["valueQuantity"]["value"]), obs["id"]))
    if not found:
        return None
    when, value, obs_id = max(found)
    return MeasureFact("wsas", value, None, on_file=f"Observation/{obs_id} of {when.date().isoformat()}")


def _summary(decision: Decision) -> str:
    head = {
        "accept": f"accepted: {STEP_DISPLAY.get(decision.step or '', decision.step)} ({decision.team})",
        "signpost": f"signposted to {decision.where}",
        "redirect": f"redirected ({decision.route}) to {decision.where}",
    }[decision.outcome]
    return f"{head}. " + "; ".join(decision.trace)


def _new_episode(referral: PathwayReferral, rules: Rules, decision: Decision, sr_id: str, patient_ref: str) -> dict[str, Any]:
    clocks: dict[str, dict[str, Any]] = {}
    for name in decision.clocks:
        clocks = start_clock(clocks, name, rules, referral.received)
    episode = episode_of_care(
        resource_id("EpisodeOfCare", f"ServiceRequest/{sr_id}", "episode"),
        rules.kind,
        {"ods": rules.service.provider_ods, "name": rules.service.name},
        decision.step or "screening",
        decision.team or rules.service.name,
        patient_ref,
        sr_id,
        referral.received,
        [],
        decision.rule_ids[-1] if decision.rule_ids else "PC-01",
    )
    return with_clocks(episode, clocks)


def _senior_screening_task(decision: Decision, rules: Rules, sr_id: str, patient_ref: str, now: datetime) -> dict[str, Any]:
    """TT-07 (appendix 1): a senior clinician screens a referral the step table could not fully decide."""
    unknown = [c for c in ("functioning", "risk") if decision.columns and getattr(decision.columns, c).value is None]
    return pathway_task(
        "senior-screening",
        "Screening by a senior clinician",
        f"ServiceRequest/{sr_id}",
        patient_ref,
        now,
        None,
        rules.service.teams.by_step.get(decision.step or "") or rules.service.name,
        ["TT-07"],
        f"Severe score with {' and '.join(unknown) or 'a column'} unknown: confirm {decision.step} or step 4/5 (TT-07 step table)",
    )


def _not_booked(
    request: dict[str, Any], decision: Decision, patient: dict[str, Any], referral: PathwayReferral, now: datetime
) -> list[dict[str, Any]]:
    """PC-13 / TT-07 / TT-04: the onward referral, the Task to make it, and the letters (referrer, patient, GP)."""
    route, where = decision.route or "signpost", decision.where or ""
    transfer = transfer_request(request, route, where, now, decision.rule_ids, f"{decision.outcome} to {where}")
    patient_ref = request["subject"]["reference"]
    out = [transfer]
    if route != "signpost":
        out.append(
            pathway_task(
                "transfer-of-care",
                "Make the onward referral",
                f"ServiceRequest/{transfer['id']}",
                patient_ref,
                now,
                None,
                None,
                decision.rule_ids,
                f"Refer to {where} (no wrong door)",
                priority="urgent" if route in ("crisis", "access-and-assessment") else "routine",
            )
        )
    letter = Letter(
        "signposting",
        "Signposting / onward referral",
        to_gp=decision.inform_gp,
        to_referrer=referral.source != "self",
        copy_to_patient=referral.copy_to_patient,
        lines=(f"The referral was not booked: {decision.outcome} to {where}",),
        rule_ids=tuple(decision.rule_ids),
    )
    out.append(_letter(letter, None, request, patient, now, about=[f"ServiceRequest/{request['id']}", f"ServiceRequest/{transfer['id']}"]))
    return out


def _letters_queued(
    session: Session, out: list[tuple[dict[str, Any], str | None]], now: datetime
) -> list[tuple[dict[str, Any], str | None]]:
    """Letter requests go through the outbox once what they report is stored (all in the caller's transaction)."""
    for resource, service_id in out:
        if resource["resourceType"] != "CommunicationRequest":
            put_resource(session, resource, now, service_id)
    return [(queue_letter(session, r, now, s), s) if r["resourceType"] == "CommunicationRequest" else (r, s) for r, s in out]


def _letter(
    letter: Letter,
    episode: dict[str, Any] | None,
    request: dict[str, Any],
    patient: dict[str, Any],
    now: datetime,
    about: list[str] | None = None,
    signed_by: str | None = None,
) -> dict[str, Any]:
    """A letter request addressed from the letter's rule: GP practice, referrer, copy to the patient (TT-14); signed by
    the practitioner named in the operation, when one was (its author, issue 34)."""
    recipients: list[dict[str, Any]] = []
    gp = next(iter(patient.get("generalPractitioner", [])), None)
    if letter.to_gp and gp:
        recipients.append(gp)
    requester = request.get("requester")
    if letter.to_referrer and requester:
        recipients.append(requester)
    copy = next((e["valueBoolean"] for e in request.get("extension", []) if e["url"].endswith("/letter-copy-to-patient")), True)
    if letter.copy_to_patient and copy:
        recipients.append({"reference": f"Patient/{patient['id']}"})
    focus = f"EpisodeOfCare/{episode['id']}" if episode else f"ServiceRequest/{request['id']}"
    refs = about or [focus, f"ServiceRequest/{request['id']}"]
    return letter_request(
        letter.letter_type,
        letter.display,
        f"Patient/{patient['id']}",
        recipients,
        list(dict.fromkeys(refs)),
        now,
        list(letter.rule_ids),
        list(letter.lines),
        key=f"{focus}#{to_fhir_instant(now)}",
        signed_by=signed_by,
    )


def _decision_parameters(decision: Decision, rules: Rules, stored: list[dict[str, Any]], sr_id: str) -> dict[str, Any]:
    params: list[dict[str, Any]] = [{"name": "outcome", "valueCode": decision.outcome}]
    if decision.step:
        params.append({"name": "step", "valueCode": decision.step})
    if decision.team:
        params.append({"name": "team", "valueString": decision.team})
    if decision.route:
        params += [{"name": "route", "valueCode": decision.route}, {"name": "where", "valueString": decision.where or ""}]
    params.append({"name": "rules-version", "valueString": rules.label})
    if decision.columns is not None:  # TT-07: the step table's three columns and which decided
        for column in ("severity", "functioning", "risk"):
            params.append({"name": column, "valueString": str(getattr(decision.columns, column))})
        params += [{"name": "decided-by", "valueCode": column} for column in decision.decided_by]
    params += [{"name": "rule", "valueCode": rule} for rule in decision.rule_ids]
    params += [{"name": "reason", "valueString": line} for line in decision.trace]
    params.append({"name": "referral", "valueReference": {"reference": f"ServiceRequest/{sr_id}"}})
    for resource in stored:
        if resource["resourceType"] in ("EpisodeOfCare", "Task", "CommunicationRequest") or (
            resource["resourceType"] == "ServiceRequest" and resource["id"] != sr_id
        ):
            name = {"EpisodeOfCare": "episode", "Task": "task", "CommunicationRequest": "letter", "ServiceRequest": "transfer"}
            params.append(
                {"name": name[resource["resourceType"]], "valueReference": {"reference": f"{resource['resourceType']}/{resource['id']}"}}
            )
    return {"resourceType": "Parameters", "parameter": params}


def _contact_types(contact: dict[str, Any]) -> list[dict[str, Any]]:
    """A pathway contact's kind, outcome and step, as Encounter.type codings (what `_contact_of` reads back)."""
    return [
        {"coding": [{"system": CONTACT_SYSTEM, "code": contact["kind"]}]},
        {"coding": [{"system": OUTCOME_SYSTEM, "code": contact["outcome"]}]},
        {"coding": [{"system": STEP_SYSTEM, "code": contact["step"]}]},
    ]


def _contact_of(encounter: dict[str, Any]) -> tuple[str, str, str, datetime]:
    codes_ = {t["coding"][0]["system"]: t["coding"][0]["code"] for t in encounter.get("type", [])}
    return (
        codes_.get(CONTACT_SYSTEM, ""),
        codes_.get(OUTCOME_SYSTEM, ""),
        codes_.get(STEP_SYSTEM, ""),
        parse_source_datetime(encounter["period"]["start"]),
    )
