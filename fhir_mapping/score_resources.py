"""A scored QuestionnaireResponse -> the resources the gateway stores for it.

Takes: the checked response (FHIR JSON), its `ScoredResponse`, and the references the
gateway resolved (Patient, Encounter). Returns: the QuestionnaireResponse as stored
(linkIds normalised, canonical questionnaire), one Observation per computed score
(FHIR R4 Observation: code = LOINC/SNOMED total code, valueQuantity `{score}`,
interpretation = band, derivedFrom = the response), and for each risk item raised
either an escalated CAS Task (CAS-04/CAS-10) or a Flag on the patient.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from common import codes
from common.datetimes import to_fhir_instant
from fhir_mapping.fhir import Flag, Observation, QuestionnaireResponse, build, to_json_dict
from fhir_mapping.ids import resource_id
from fhir_mapping.scoring import RiskHit, ScoredResponse

__all__ = ["stored_response", "score_observations", "risk_flag", "escalate_task", "names_risk", "risk_summary", "BAND_SYSTEM"]

BAND_SYSTEM = f"{codes.GATEWAY_BASE}/CodeSystem/score-band"
RISK_ITEM_SYSTEM = f"{codes.GATEWAY_BASE}/CodeSystem/measure-risk-item"


def stored_response(
    qr: dict[str, Any], scored: ScoredResponse, qr_id: str, subject: dict[str, str], encounter: dict[str, str] | None
) -> dict[str, Any]:
    """The response as we keep it: our id, canonical questionnaire|version, bare linkIds, resolved references."""
    body = {k: v for k, v in qr.items() if k not in ("id", "meta", "text", "contained")}
    body.update(
        id=qr_id,
        meta={"profile": [f"{codes.UKCORE}QuestionnaireResponse"]},
        questionnaire=f"{scored.measure.url}|{scored.measure.questionnaire['version']}",
        subject=subject,
        item=_bare_link_ids(qr.get("item") or []),
    )
    if encounter:
        body["encounter"] = encounter
    # built, not validated again: a sender's response is checked, and taken as its model writes it, where it comes in
    # (`scoring.read_response`); the responses of the CSV exports are the gateway's own
    return to_json_dict(build(QuestionnaireResponse, **{k: v for k, v in body.items() if k != "resourceType"}))


def _bare_link_ids(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for item in items:
        copy = dict(item, linkId=str(item["linkId"]).lstrip("/"))
        if item.get("item"):
            copy["item"] = _bare_link_ids(item["item"])
        out.append(copy)
    return out


def score_observations(
    scored: ScoredResponse, qr_id: str, subject: dict[str, str], encounter: dict[str, str] | None, effective: str
) -> list[dict[str, Any]]:
    """One Observation per score that has a value; scores without one are reported, not stored as data."""
    out = []
    for score in scored.scores:
        if score.value is None:
            continue
        spec = score.spec
        observation = build(
            Observation,
            id=resource_id("Observation", qr_id, spec.id),
            meta={"profile": [f"{codes.UKCORE}Observation"]},
            status="final",
            category=[
                {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "survey", "display": "Survey"}
                    ]
                }
            ],
            code={
                "coding": [c.model_dump(exclude_none=True) for c in spec.codes],
                "text": f"{scored.measure.spec.title} {spec.id.replace('-', ' ')}",
            },
            subject=subject,
            encounter=encounter,
            effectiveDateTime=effective,
            valueQuantity={"value": score.value, "unit": "{score}", "system": codes.UCUM, "code": "{score}"},
            interpretation=(
                [
                    {
                        "coding": [
                            {"system": BAND_SYSTEM, "code": f"{scored.measure.id}-{score.band.code}", "display": score.band.display}
                        ],
                        "text": score.band.display,
                    }
                ]
                if score.band
                else None
            ),
            note=[{"text": score.note}] if score.note else None,
            derivedFrom=[{"reference": f"QuestionnaireResponse/{qr_id}"}],
        )
        out.append(to_json_dict(observation))
    return out


REFUSED = "in a QuestionnaireResponse refused for other reasons (not stored; gateway id {qr_id})"


def risk_flag(
    scored: ScoredResponse,
    hit: RiskHit,
    qr_id: str,
    subject: dict[str, str],
    encounter: dict[str, str] | None,
    start: str,
    refused: bool = False,
) -> dict[str, Any]:
    """A Flag on the patient for a risk answer when no open CAS case can take it (never lost). Its id is the
    response's and the item's, so a re-send (refused or not) finds the same Flag. A refused response is not
    stored: its Flag says so instead of pointing at it (issue 33)."""
    detail = (
        [{"url": "http://hl7.org/fhir/StructureDefinition/flag-detail", "valueReference": {"reference": f"QuestionnaireResponse/{qr_id}"}}]
        if not refused
        else None
    )
    where = f" {REFUSED.format(qr_id=qr_id)}" if refused else ""
    flag = build(
        Flag,
        id=resource_id("Flag", qr_id, hit.link_id),
        meta={"profile": [f"{codes.UKCORE}Flag"]},
        extension=detail,
        status="active",
        category=[{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/flag-category", "code": "safety", "display": "Safety"}]}],
        code={
            "coding": [{"system": RISK_ITEM_SYSTEM, "code": f"{scored.measure.id}-{hit.link_id}", "display": hit.reason}],
            "text": f"{hit.reason}: answered '{hit.answer_display}'{where}",
        },
        subject=subject,
        encounter=encounter,
        period={"start": start},
    )
    return to_json_dict(flag)


def names_risk(task: dict[str, Any], qr_id: str, hit: RiskHit) -> bool:
    """The Task already carries this response's reason for this risk item (a re-send escalates nothing twice)."""
    return any(qr_id in i.get("valueString", "") and hit.reason in i.get("valueString", "") for i in task.get("input", []))


def risk_summary(scored: ScoredResponse, hits: list[RiskHit]) -> str:
    """For $explain (a Provenance's reason): which items, answered how, and the scoring-file setting that decided."""
    parts = []
    for hit in hits:
        item = scored.measure.item_spec(hit.link_id)
        risk = item.risk if item else None
        setting = f"above {risk.above:g}" if risk and risk.above is not None else f"equals {risk.equals}" if risk else "?"
        parts.append(
            f"{scored.measure.spec.title} item {hit.link_id} answered '{hit.answer_display}'"
            f" (setting: {scored.measure.id}.scoring.yaml items[{hit.link_id}].risk: {setting})"
        )
    return "; ".join(parts) + ": classified Urgent CN Review"


def escalate_task(
    task: dict[str, Any], scored: ScoredResponse, hit: RiskHit, qr_id: str, now: datetime, refused: bool = False
) -> dict[str, Any]:
    """CAS-04/CAS-10: the open CAS case for this patient becomes Urgent CN Review, saying why."""
    updated = {k: v for k, v in task.items() if k != "meta"}
    updated["businessStatus"] = {
        "coding": [
            {"system": codes.CAS_CLASSIFICATION, "code": "urgent-cn-review", "display": codes.CLASSIFICATION_DISPLAY["urgent-cn-review"]}
        ]
    }
    updated["lastModified"] = to_fhir_instant(now)
    reason = (
        f"CAS-10: {scored.measure.spec.title} {hit.reason} answered '{hit.answer_display}' "
        f"({REFUSED.format(qr_id=qr_id) if refused else f'QuestionnaireResponse/{qr_id}'}): classified Urgent CN Review"
    )
    updated["input"] = [
        *task.get("input", []),
        {"type": {"coding": [{"system": codes.CAS_TASK_INPUT, "code": "rule-reason", "display": "Why"}]}, "valueString": reason},
    ]
    return updated
