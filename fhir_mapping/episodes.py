"""FHIR for the PC and TT pathways: the referral as received, the episode of care with its step history and
clocks, work Tasks (duty screening, clock due, transfer), transfer ServiceRequests and letter requests.

Pure functions: typed inputs and dicts in, FHIR JSON out (built through fhir.resources, so a shape
error fails here, not at the receiver). Ids are deterministic, so a re-run writes the same resources.

EpisodeOfCare carries, as gateway extensions:
  step-history  one entry per step: step code, period, how it was reached (referral | up | down | across | out), rule id
  clock         one entry per waiting-time clock: name, rule, start, due, stop time and reason
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from adapters.pathway_referral import (
    COPY_URL,
    FINDING_SYSTEM,
    GP_CONTACT_URL,
    SERVICE_SYSTEM,
    SOURCE_SYSTEM,
    STEP_SYSTEM,
    PathwayReferral,
)
from common import codes
from common.datetimes import to_fhir_instant
from fhir_mapping.fhir import CommunicationRequest, EpisodeOfCare, ServiceRequest, Task, build, to_json_dict
from fhir_mapping.ids import resource_id

__all__ = [
    "STEP_HISTORY_URL",
    "CLOCK_URL",
    "LETTER_TYPE",
    "PATHWAY_TASK",
    "STEP_DISPLAY",
    "referral_request",
    "episode_of_care",
    "transfer_request",
    "pathway_task",
    "letter_request",
    "episode_steps",
    "episode_clocks",
    "with_clocks",
    "with_step",
    "with_exit",
    "clock_entry",
]

STEP_HISTORY_URL = f"{codes.GATEWAY_BASE}/StructureDefinition/step-history"
CLOCK_URL = f"{codes.GATEWAY_BASE}/StructureDefinition/pathway-clock"
LETTER_TYPE = f"{codes.GATEWAY_BASE}/CodeSystem/letter-type"
PATHWAY_TASK = f"{codes.GATEWAY_BASE}/CodeSystem/pathway-task"
ROUTE_SYSTEM = f"{codes.GATEWAY_BASE}/CodeSystem/pathway-route"
RULE_SYSTEM = f"{codes.GATEWAY_BASE}/CodeSystem/domain-rule"
STEP_DISPLAY = {
    "mhwbtc": "Mental health and wellbeing triage coach",
    "mhp": "Mental health practitioner",
    "pcmhh": "Primary care mental health hub",
    "screening": "Referral screening",
    "step-2": "Step 2 (low intensity)",
    "step-3": "Step 3 (high intensity)",
}
_SERVICE_KIND = {"primary-care": "Primary care mental health service", "talking-therapies": "NHS Talking Therapies"}


def _coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    return {"system": system, "code": code, **({"display": display} if display else {})}


def _rules_reason(rule_ids: list[str] | tuple[str, ...], text: str) -> list[dict[str, Any]]:
    return [{"coding": [_coding(RULE_SYSTEM, r) for r in rule_ids], "text": text}]


def referral_request(
    referral: PathwayReferral, sr_id: str, patient_ref: str, service_name: str, outcome: str, summary: str
) -> dict[str, Any]:
    """The referral as the service received it (contained resources resolved and stored on their own)."""
    extensions = []
    if referral.gp_contact_agreed is not None:
        extensions.append({"url": GP_CONTACT_URL, "valueBoolean": referral.gp_contact_agreed})
    extensions.append({"url": COPY_URL, "valueBoolean": referral.copy_to_patient})
    request = build(
        ServiceRequest,
        id=sr_id,
        meta={"profile": [f"{codes.UKCORE}ServiceRequest"]},
        extension=extensions,
        identifier=[{"system": referral.system, "value": referral.value}],
        status="active" if outcome == "accept" else "completed",
        intent="order",
        priority=referral.priority,
        category=[{"coding": [_coding(SOURCE_SYSTEM, referral.source)]}],
        code={"coding": [_coding(STEP_SYSTEM, referral.requested_step)]} if referral.requested_step else None,
        subject={"reference": patient_ref},
        authoredOn=to_fhir_instant(referral.received),
        requester={"display": referral.requester} if referral.requester else None,
        performer=[{"identifier": {"system": SERVICE_SYSTEM, "value": referral.service_id}, "display": service_name}],
        reasonCode=[{"coding": [_coding(FINDING_SYSTEM, f)]} for f in referral.findings] or None,
        note=[{"text": summary}],
    )
    return to_json_dict(request)


def clock_entry(name: str, rule: str, start: datetime, due: datetime) -> dict[str, Any]:
    return {
        "url": CLOCK_URL,
        "extension": [
            {"url": "name", "valueCode": name},
            {"url": "rule", "valueCode": rule},
            {"url": "start", "valueDateTime": to_fhir_instant(start)},
            {"url": "due", "valueDateTime": to_fhir_instant(due)},
        ],
    }


def _step_entry(step: str, start: datetime, how: str, rule: str) -> dict[str, Any]:
    return {
        "url": STEP_HISTORY_URL,
        "extension": [
            {"url": "step", "valueCoding": _coding(STEP_SYSTEM, step, STEP_DISPLAY.get(step))},
            {"url": "start", "valueDateTime": to_fhir_instant(start)},
            {"url": "how", "valueCode": how},
            {"url": "rule", "valueCode": rule},
        ],
    }


def episode_of_care(
    episode_id: str,
    kind: str,
    service: dict[str, str],
    step: str,
    team: str,
    patient_ref: str,
    sr_id: str,
    received: datetime,
    clocks: list[dict[str, Any]],
    rule: str,
) -> dict[str, Any]:
    """A patient's time with a service: waitlist until the first assessment or allocation, then active, then finished."""
    episode = build(
        EpisodeOfCare,
        id=episode_id,
        extension=[_step_entry(step, received, "referral", rule), *clocks],
        status="waitlist",
        statusHistory=[{"status": "waitlist", "period": {"start": to_fhir_instant(received)}}],
        type=[
            {"coding": [_coding(f"{codes.GATEWAY_BASE}/CodeSystem/pathway-service-kind", kind, _SERVICE_KIND[kind])]},
            {"coding": [_coding(STEP_SYSTEM, step, STEP_DISPLAY.get(step))]},
        ],
        patient={"reference": patient_ref},
        managingOrganization={"identifier": {"system": codes.ODS_ORG, "value": service["ods"]}, "display": service["name"]},
        period={"start": to_fhir_instant(received)},
        referralRequest=[{"reference": f"ServiceRequest/{sr_id}"}],
        team=[{"display": team}],
    )
    return to_json_dict(episode)


def episode_steps(episode: dict[str, Any]) -> list[dict[str, Any]]:
    """The step history as plain dicts: step, start, end, how, rule."""
    out = []
    for ext in episode.get("extension", []):
        if ext["url"] == STEP_HISTORY_URL:
            values = {e["url"]: next(v for k, v in e.items() if k.startswith("value")) for e in ext["extension"]}
            values["step"] = values["step"]["code"]
            out.append(values)
    return out


def episode_clocks(episode: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The clocks as plain dicts by name: name, rule, start, due, and stopped + reason once stopped (the latest run)."""
    out = {}
    for ext in episode.get("extension", []):
        if ext["url"] == CLOCK_URL:
            values = {e["url"]: next(v for k, v in e.items() if k.startswith("value")) for e in ext["extension"]}
            out[values["name"]] = values
    return out


def with_clocks(episode: dict[str, Any], clocks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The episode with its clock extensions replaced by `clocks` (plain dicts as `episode_clocks` gives)."""
    kept = [e for e in episode.get("extension", []) if e["url"] != CLOCK_URL]
    entries = []
    for values in clocks.values():
        entry = [{"url": "name", "valueCode": values["name"]}, {"url": "rule", "valueCode": values["rule"]}]
        entry += [{"url": key, "valueDateTime": values[key]} for key in ("start", "due", "stopped") if values.get(key)]
        if values.get("reason"):
            entry.append({"url": "reason", "valueString": values["reason"]})
        entries.append({"url": CLOCK_URL, "extension": entry})
    return {k: v for k, v in episode.items() if k != "meta"} | {"extension": kept + entries}


def with_step(episode: dict[str, Any], step: str, team: str | None, moment: datetime, how: str, rule: str) -> dict[str, Any]:
    """The episode moved to `step` (the previous step's period ends now); type[1] and team follow."""
    extensions = _close_open_step(episode, moment, [])
    history = [e for e in extensions if e["url"] == STEP_HISTORY_URL]
    others = [e for e in extensions if e["url"] != STEP_HISTORY_URL]
    out = {k: v for k, v in episode.items() if k != "meta"}
    out["extension"] = [*history, _step_entry(step, moment, how, rule), *others]
    out["type"] = [episode["type"][0], {"coding": [_coding(STEP_SYSTEM, step, STEP_DISPLAY.get(step))]}]
    if team:
        out["team"] = [{"display": team}]
    return out


def _close_open_step(episode: dict[str, Any], moment: datetime, extra: list[dict[str, Any]]) -> list[dict[str, Any]]:
    when = to_fhir_instant(moment)
    out = []
    for ext in episode.get("extension", []):
        if ext["url"] == STEP_HISTORY_URL and not any(e["url"] == "end" for e in ext["extension"]):
            ext = {"url": ext["url"], "extension": [*ext["extension"], {"url": "end", "valueDateTime": when}, *extra]}
        out.append(ext)
    return out


def with_exit(episode: dict[str, Any], moment: datetime, how: str) -> dict[str, Any]:
    """The episode's open step ends now, marked with how the patient left (up | down | across | out)."""
    extensions = _close_open_step(episode, moment, [{"url": "exit", "valueCode": how}])
    return {k: v for k, v in episode.items() if k != "meta"} | {"extension": extensions}


def transfer_request(
    original: dict[str, Any], route: str, where: str, moment: datetime, rule_ids: list[str], summary: str
) -> dict[str, Any]:
    """PC-13 no wrong door: the onward referral (or signposting) to a named destination, based on the original."""
    request = build(
        ServiceRequest,
        id=resource_id("ServiceRequest", f"ServiceRequest/{original['id']}", f"transfer-{route}-{to_fhir_instant(moment)}"),
        basedOn=[{"reference": f"ServiceRequest/{original['id']}"}],
        status="active",
        intent="order",
        priority=original.get("priority", "routine"),
        category=[{"coding": [_coding(ROUTE_SYSTEM, route)]}],
        code={"text": f"Transfer of care: {where}"},
        subject=original["subject"],
        authoredOn=to_fhir_instant(moment),
        performer=[{"display": where}],
        reasonCode=_rules_reason(rule_ids, summary),
    )
    return to_json_dict(request)


def pathway_task(
    kind: str,
    display: str,
    focus: str,
    patient_ref: str,
    moment: datetime,
    due: datetime | None,
    owner: str | None,
    rule_ids: list[str],
    summary: str,
    priority: str = "routine",
    key: str = "",
) -> dict[str, Any]:
    """One piece of work for the service (duty screening, a clock due, a transfer to make); one per focus and key."""
    task = build(
        Task,
        id=resource_id("Task", focus, f"{kind}#{key}"),
        status="requested",
        intent="order",
        priority=priority,
        code={"coding": [_coding(PATHWAY_TASK, kind, display)]},
        description=summary,
        focus={"reference": focus},
        **{"for": {"reference": patient_ref}},
        authoredOn=to_fhir_instant(moment),
        lastModified=to_fhir_instant(moment),
        owner={"display": owner} if owner else None,
        restriction={"period": {"end": to_fhir_instant(due)}} if due else None,
        reasonCode=_rules_reason(rule_ids, summary)[0],
    )
    return to_json_dict(task)


def letter_request(
    letter_type: str,
    display: str,
    subject_ref: str,
    recipients: list[dict[str, Any]],
    about: list[str],
    moment: datetime,
    rule_ids: list[str],
    lines: list[str],
    key: str,
    signed_by: str | None = None,
) -> dict[str, Any]:
    """A letter the outbox must deliver (TT-14, TT-07 signposting, TT-10 KIT opt-out, TT-13, PC-13 transfer); `signed_by`:
    the practitioner named in the operation, the letter's author (issue 34, GPCM-SD-121)."""
    request = build(
        CommunicationRequest,
        id=resource_id("CommunicationRequest", key, letter_type),
        status="active",
        category=[{"coding": [_coding(LETTER_TYPE, letter_type, display)]}],
        priority="routine",
        subject={"reference": subject_ref},
        about=[{"reference": ref} for ref in about] or None,
        recipient=recipients or None,
        payload=[{"contentString": line} for line in lines] or None,
        authoredOn=to_fhir_instant(moment),
        requester={"display": signed_by} if signed_by else None,
        reasonCode=_rules_reason(rule_ids, lines[0] if lines else display),
    )
    return to_json_dict(request)
