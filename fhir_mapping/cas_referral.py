"""NHS 111 `Referral` + CAS queue decision -> FHIR R4 resources for the CAS queue.

Takes: a parsed `Referral` (adapters.referral) and the intake `QueueDecision` values.
Returns: Patient, ServiceRequest (the referral), Encounter (the 111 call),
QuestionnaireResponse (red-flag answers, when any were asked), Flag (risk flags sent
with a BaRS message) and the CAS queue Task (FHIR R4 Task page: status, intent,
priority, businessStatus = classification, restriction.period.end = breach time).
Ids are deterministic (fhir_mapping.ids), so a replay maps to the same resources.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from adapters.referral import Referral
from common import codes
from common.datetimes import to_fhir_instant
from fhir_mapping.fhir import (
    Built,
    Encounter,
    Flag,
    Patient,
    QuestionnaireResponse,
    Resource,
    ServiceRequest,
    Task,
    build,
)
from fhir_mapping.ids import resource_id
from fhir_mapping.patients import patient_resource

__all__ = ["TaskPlan", "CasReferralResources", "map_cas_referral"]


@dataclass(frozen=True)
class TaskPlan:
    """The values the rules decided for the queue Task (kept free of the rules engine's types)."""

    priority: str
    classification: str | None
    breach_time: datetime
    timeframe: timedelta
    service_name: str
    provider_ods: str
    rule_set: str
    rule_ids: tuple[str, ...]
    reasons: tuple[str, ...]
    specialist_desk: bool = False


@dataclass
class CasReferralResources:
    patient: Built[Patient]
    service_request: Built[ServiceRequest]
    encounter: Built[Encounter]
    task: Built[Task]
    questionnaire_response: Built[QuestionnaireResponse] | None = None
    flags: list[Built[Flag]] = field(default_factory=list)

    def all(self) -> list[Built[Any]]:
        """Every resource, in dependency order (a reader can resolve references front to back)."""
        extra: list[Built[Any]] = [self.questionnaire_response] if self.questionnaire_response else []
        return [self.patient, self.encounter, *extra, *self.flags, self.service_request, self.task]

    def as_json(self) -> list[dict[str, Any]]:
        return [r.json for r in self.all()]


def map_cas_referral(referral: Referral, plan: TaskPlan, received_at: datetime) -> CasReferralResources:
    """Map one referral to its FHIR resources. Pure: same inputs, same output."""
    key = (referral.source_system, referral.source_id)
    ids = {t: resource_id(t, *key) for t in ("ServiceRequest", "Encounter", "Task", "QuestionnaireResponse")}
    patient = _patient(referral)
    patient_ref = {"reference": f"Patient/{patient.id}"}
    encounter_ref = {"reference": f"Encounter/{ids['Encounter']}"}
    call_time = to_fhir_instant(referral.call_time)

    encounter = _uk_core(
        Encounter,
        id=ids["Encounter"],
        identifier=[{"system": referral.source_system, "value": referral.source_id}],
        status="finished",
        class_fhir={"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "VR", "display": "virtual"},
        type=[{"text": f"NHS 111 assessment ({referral.channel.value})"}],
        subject=patient_ref,
        period={"start": call_time},
    )
    qr = _red_flag_answers(referral, ids["QuestionnaireResponse"], patient_ref, encounter_ref, call_time)
    flags = [_flag(referral, index, patient_ref, encounter_ref) for index in range(len(referral.risk_flags))]
    supporting = ([{"reference": f"QuestionnaireResponse/{qr.id}"}] if qr else []) + [{"reference": f"Flag/{f.id}"} for f in flags]
    owner = {"identifier": {"system": codes.ODS_ORG, "value": plan.provider_ods}, "display": plan.service_name}

    service_request = _uk_core(
        ServiceRequest,
        id=ids["ServiceRequest"],
        identifier=[{"system": referral.source_system, "value": referral.source_id}],
        status="active",
        intent="order",
        category=[{"coding": [{"system": codes.SNOMED, "code": "3457005", "display": "Patient referral"}]}],
        code={"coding": [{"system": codes.SNOMED, "code": "390866009", "display": "Referral to mental health team"}]},
        subject=patient_ref,
        encounter=encounter_ref,
        authoredOn=call_time,
        occurrencePeriod={
            "start": call_time,
            **({"end": to_fhir_instant(referral.callback_deadline)} if referral.callback_deadline else {}),
        },
        performer=[owner],
        requester=_requester(referral),
        reasonCode=_pathways_codes(referral) or None,
        supportingInfo=supporting or None,
        note=[{"text": referral.free_text}]
        if referral.free_text
        else ([{"text": referral.pathways.summary}] if referral.pathways and referral.pathways.summary else None),
    )
    task = _task(referral, plan, ids["Task"], ids["ServiceRequest"], patient_ref, encounter_ref, owner, received_at)
    return CasReferralResources(patient, service_request, encounter, task, qr, flags)


M = TypeVar("M", bound=Resource)


def _uk_core(model: type[M], **fields: Any) -> Built[M]:
    """A resource claiming its UK Core profile (https://fhir.hl7.org.uk/StructureDefinition/UKCore-<Type>)."""
    return build(model, meta={"profile": [f"{codes.UKCORE}{model.__name__}"]}, **fields)


def _requester(referral: Referral) -> dict[str, Any] | None:
    """The MHPL professional who called (CAS-06), as a display reference (no directory to resolve them against)."""
    pro = referral.professional
    if pro is None:
        return None
    words = ", ".join(w for w in (pro.name, pro.role, f"{pro.service} (emergency services)", pro.staff_id) if w)
    return {"display": words}


def _patient(referral: Referral) -> Built[Patient]:
    return patient_resource(referral.patient, referral.gp_practice_ods)


def _pathways_codes(referral: Referral) -> list[dict[str, Any]]:
    outcome = referral.pathways
    if outcome is None:
        return []
    rows = [
        (codes.PATHWAYS_SG, outcome.symptom_group, None),
        (codes.PATHWAYS_SD, outcome.symptom_discriminator, None),
        (codes.PATHWAYS_DX, outcome.dx, outcome.dx_display),
        (codes.PATHWAYS_PW, outcome.pathway, None),
    ]
    return [
        {"coding": [{"system": system, "code": code, **({"display": display} if display else {})}]}
        for system, code, display in rows
        if code
    ]


def _red_flag_answers(
    referral: Referral, qr_id: str, patient_ref: dict[str, str], encounter_ref: dict[str, str], call_time: str
) -> Built[QuestionnaireResponse] | None:
    if not referral.red_flags:
        return None
    return _uk_core(
        QuestionnaireResponse,
        id=qr_id,
        questionnaire=codes.RED_FLAG_QUESTIONNAIRE,
        status="completed",
        subject=patient_ref,
        encounter=encounter_ref,
        authored=call_time,
        item=[
            {"linkId": flag.question_id, "text": flag.question, "answer": [{"valueBoolean": flag.answer}]} for flag in referral.red_flags
        ],
    )


def _flag(referral: Referral, index: int, patient_ref: dict[str, str], encounter_ref: dict[str, str]) -> Built[Flag]:
    sent = referral.risk_flags[index]
    category = (
        [{"coding": [{"system": sent.category_system, "code": sent.category_code}]}]
        if sent.category_system and sent.category_code
        else None
    )
    code: dict[str, Any] = {}  # CodeableConcept element order: coding, then text
    if sent.code_system and sent.code:
        code["coding"] = [{"system": sent.code_system, "code": sent.code, **({"display": sent.display} if sent.display else {})}]
    code["text"] = sent.display or "Risk flag sent with the referral"
    return _uk_core(
        Flag,
        id=resource_id("Flag", referral.source_system, f"{referral.source_id}#{index}"),
        status="active",
        category=category,
        code=code,
        subject=patient_ref,
        encounter=encounter_ref,
    )


def _task(
    referral: Referral,
    plan: TaskPlan,
    task_id: str,
    service_request_id: str,
    patient_ref: dict[str, str],
    encounter_ref: dict[str, str],
    owner: dict[str, Any],
    received_at: datetime,
) -> Built[Task]:
    minutes = int(plan.timeframe.total_seconds() // 60)
    inputs: list[dict[str, Any]] = [
        _input(
            "callback-timeframe", "Callback timeframe", valueDuration={"value": minutes, "unit": "min", "system": codes.UCUM, "code": "min"}
        ),
        _input("rule-set", "Rule set that decided this case", valueString=plan.rule_set),
        _input("rules-applied", "Rule ids applied", valueString=" ".join(plan.rule_ids)),
        *[_input("rule-reason", "Why", valueString=reason) for reason in plan.reasons],
    ]
    if referral.pathways and referral.pathways.dx:
        inputs.append(
            _input(
                "pathways-disposition", "NHS Pathways disposition", valueCoding={"system": codes.PATHWAYS_DX, "code": referral.pathways.dx}
            )
        )
    inputs.append(_input("source-channel", "How the case arrived", valueString=referral.channel.value))
    if plan.specialist_desk:
        inputs.append(_input("specialist-desk", "Specialist Desk case: GP notified on completion (CAS-15)", valueBoolean=True))
    business_status = (
        {
            "coding": [
                {
                    "system": codes.CAS_CLASSIFICATION,
                    "code": plan.classification,
                    "display": codes.CLASSIFICATION_DISPLAY[plan.classification],
                }
            ]
        }
        if plan.classification
        else None
    )
    received = to_fhir_instant(received_at)
    return _uk_core(
        Task,
        id=task_id,
        identifier=[{"system": referral.source_system, "value": referral.source_id}],
        basedOn=[{"reference": f"ServiceRequest/{service_request_id}"}],
        status="ready",
        businessStatus=business_status,
        intent="order",
        priority=plan.priority,
        code={"coding": [{"system": codes.CAS_TASK_TYPE, "code": "cas-callback", "display": "CAS clinical callback"}]},
        description=f"Mental health callback from {plan.service_name} CAS queue",
        focus={"reference": f"ServiceRequest/{service_request_id}"},
        for_fhir=patient_ref,
        encounter=encounter_ref,
        authoredOn=received,
        lastModified=received,
        owner=owner,
        restriction={"period": {"start": to_fhir_instant(referral.call_time), "end": to_fhir_instant(plan.breach_time)}},
        input=inputs,
    )


def _input(code: str, display: str, **value: Any) -> dict[str, Any]:
    return {"type": {"coding": [{"system": codes.CAS_TASK_INPUT, "code": code, "display": display}]}, **value}
