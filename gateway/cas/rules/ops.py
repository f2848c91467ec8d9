"""CAS case operations: every state change of a queue case is an operation with rules, not a free edit.

Operations (FHIR `Task/{id}/$<name>` with a `Parameters` body):
  cn-review                CAS-07 suitability, clear classification, upgrade ("pink"); CAS-08 never downgrade
  record-contact-attempt   CAS-10 new or worsening concern -> Urgent CN Review; CAS-11 failed contacts
  known-service            CAS-12 document usual provider -> agreed / declined -> CN closes
  end-assessment           CAS-13 registered may complete, unregistered awaits ratification; CAS-14 physical health
  ratify                   CAS-13 a registered practitioner ratifies an unregistered consultation

The two that end a consultation also take `plan`, `follow-up` and `safety-advice` (valueString, optional), kept as
Task inputs of those codes: the GP letter shows each under its own heading (CAS-13, issue 34).

Each takes the Task as stored and returns the new Task plus a plain-words summary naming the rule
ids; the service layer stores it with a Provenance (who, when, why). Refusals change nothing.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from adapters.json_shapes import JsonShape
from adapters.problems import GatewayInputError, Kind, Problem, ProblemList
from common import codes
from common.datetimes import format_iso_duration, parse_iso_duration, parse_source_datetime, to_fhir_instant
from fhir_mapping.ids import resource_id
from gateway.cas.rules.queue import breach_time, priority_rank
from gateway.cas.rules.schema import ServiceRules

__all__ = ["OPERATIONS", "OpResult", "Params", "apply_operation", "awaiting_ratification", "parse_parameters"]

RATIFICATION_MARK = "awaiting-ratification"  # Task.input code: the CAS-13 mark, kept apart from the classification
# what the consultation concluded, each its own Task.input (parameter name = input code) for the GP letter's headings
CONSULTATION_OUTCOME = {"plan": "Plan", "follow-up": "Follow-up", "safety-advice": "Safety advice"}
OPEN = ("requested", "received", "accepted", "ready", "in-progress", "on-hold")


@dataclass
class OpResult:
    task: dict[str, Any]
    summary: str
    rule_ids: tuple[str, ...]
    extra: list[dict[str, Any]] = field(default_factory=list)  # other resources to write (a consultation Encounter)


class Params:
    """The operation's Parameters by name, with typed getters that refuse bad input naming the parameter."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values

    def _where(self, name: str) -> str:
        return f"Parameters.parameter.where(name='{name}')"

    def string(self, name: str, required: bool = False) -> str | None:
        value = self.values.get(name)
        if value is None:
            if required:
                raise GatewayInputError(Problem(Kind.REQUIRED, self._where(name), f"parameter {name!r} is required"))
            return None
        if not isinstance(value, str) or not value.strip():
            raise GatewayInputError(Problem(Kind.VALUE, self._where(name), f"parameter {name!r} must be a non-empty string"))
        return value.strip()

    def code(self, name: str, allowed: tuple[str, ...], required: bool = False) -> str | None:
        value = self.string(name, required)
        if value is not None and value not in allowed:
            raise GatewayInputError(Problem(Kind.VALUE, self._where(name), f"parameter {name!r} must be one of {list(allowed)}"))
        return value

    def moment(self, name: str, default: datetime) -> datetime:
        """A valueDateTime with a UTC offset (or `default` when the parameter is absent)."""
        value = self.values.get(name)
        if value is None:
            return default
        try:
            return parse_source_datetime(value) if isinstance(value, str) else _not_a_datetime()
        except ValueError:
            raise GatewayInputError(
                Problem(Kind.VALUE, self._where(name), f"parameter {name!r} must be a valueDateTime with a UTC offset")
            ) from None

    def boolean(self, name: str, required: bool = False) -> bool | None:
        value = self.values.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, bool):
            raise GatewayInputError(Problem(Kind.VALUE, self._where(name), f"parameter {name!r} must be valueBoolean"))
        return value


def _not_a_datetime() -> datetime:
    raise ValueError("not a dateTime string")


_PARAMETERS = JsonShape({"parameter": list, "parameter[]": dict, "parameter[].name": str})


def parse_parameters(body: dict[str, Any]) -> Params:
    """A FHIR Parameters resource -> Params (one value[x] per name; unknown shapes refused)."""
    if body.get("resourceType") != "Parameters":
        raise GatewayInputError(Problem(Kind.STRUCTURE, "resourceType", "an operation takes a Parameters resource"))
    problems = ProblemList()
    _PARAMETERS.check(body, "Parameters", problems)  # a wrongly typed element is a 400 naming it, not a crash
    problems.raise_if_errors("parse")
    values: dict[str, Any] = {}
    for index, parameter in enumerate(body.get("parameter") or []):
        name = parameter.get("name") if isinstance(parameter, dict) else None
        keys = [k for k in (parameter or {}) if isinstance(k, str) and k.startswith("value")]
        if not isinstance(name, str) or len(keys) != 1:
            raise GatewayInputError(
                Problem(Kind.STRUCTURE, f"Parameters.parameter[{index}]", "each parameter needs a name and one value[x]")
            )
        if name in values:
            raise GatewayInputError(Problem(Kind.VALUE, f"Parameters.parameter[{index}]", f"parameter {name!r} given twice"))
        values[name] = parameter[keys[0]]
    return Params(values)


# --- helpers on the Task ------------------------------------------------------------------------


def classification(task: dict[str, Any]) -> str | None:
    return ((task.get("businessStatus") or {}).get("coding") or [{}])[0].get("code")


def _classify(task: dict[str, Any], code: str | None) -> None:
    if code is None:
        task.pop("businessStatus", None)
    else:
        task["businessStatus"] = {
            "coding": [{"system": codes.CAS_CLASSIFICATION, "code": code, "display": codes.CLASSIFICATION_DISPLAY[code]}]
        }


def _input_value(task: dict[str, Any], code: str) -> Any:
    for item in task.get("input", []):
        if item["type"]["coding"][0]["code"] == code:
            return next(v for k, v in item.items() if k.startswith("value"))
    return None


def _set_input(task: dict[str, Any], code: str, display: str, **value: Any) -> None:
    task["input"] = [i for i in task.get("input", []) if i["type"]["coding"][0]["code"] != code]
    task["input"].append({"type": {"coding": [{"system": codes.CAS_TASK_INPUT, "code": code, "display": display}]}, **value})


def _consultation_outcome(task: dict[str, Any], p: Params) -> None:
    """CAS-13: the plan, follow-up and safety advice given when the consultation ends (each optional; a later one replaces)."""
    for code, display in CONSULTATION_OUTCOME.items():
        value = p.string(code)
        if value is not None:
            _set_input(task, code, display, valueString=value)


def _refuse(message: str, element: str = "Task.status") -> GatewayInputError:
    return GatewayInputError(Problem(Kind.CONFLICT, element, message), stage="rules")


# --- the operations -----------------------------------------------------------------------------


def cn_review(task: dict[str, Any], p: Params, rules: ServiceRules, now: datetime) -> OpResult:
    """CAS-07: suitability, clear the classification, or upgrade ("pink"); CAS-08: a downgrade is refused."""
    suitability = p.code("suitability", ("registered", "unregistered"))
    clear = p.boolean("clear-classification")
    priority = p.code("priority", codes.PRIORITY_ORDER)
    timeframe = p.string("timeframe")
    said, rule_ids = [], ["CAS-07"]
    if priority is not None and priority_rank(priority) < priority_rank(task.get("priority")):
        raise _refuse(
            f"CAS-08: priority {task.get('priority')} -> {priority} is a downgrade; priority may only be upgraded", "Task.priority"
        )
    if timeframe is not None:
        try:
            window = parse_iso_duration(timeframe)
        except ValueError as exc:
            raise GatewayInputError(Problem(Kind.VALUE, "Parameters.parameter.where(name='timeframe')", str(exc))) from None
        new_breach = now + window
        if new_breach > breach_time(task):
            raise _refuse(
                f"CAS-08: a {timeframe} callback from now ({to_fhir_instant(new_breach)}) is later than the current breach time "
                f"{task['restriction']['period']['end']}: a downgrade; priority may only be upgraded",
                "Task.restriction.period.end",
            )
        task["restriction"]["period"]["end"] = to_fhir_instant(new_breach)
        task["priority"] = max(task.get("priority") or "routine", rules.task_priority_for(window), priority or "routine", key=priority_rank)
        _set_input(task, "pinked", "Pinked (upgraded by a Clinical Navigator)", valueBoolean=True)
        said.append(f"pinked: callback within {format_iso_duration(window)}, breach {task['restriction']['period']['end']}")
        rule_ids.append("CAS-08")
    elif priority is not None and priority != task.get("priority"):
        task["priority"] = priority
        _set_input(task, "pinked", "Pinked (upgraded by a Clinical Navigator)", valueBoolean=True)
        said.append(f"pinked: priority {priority}")
        rule_ids.append("CAS-08")
    if suitability:
        task["performerType"] = [
            {
                "coding": [
                    {"system": codes.PRACTITIONER_SUITABILITY, "code": suitability, "display": f"{suitability.capitalize()} practitioner"}
                ]
            }
        ]
        said.append(f"suitable for a {suitability} practitioner")
    if clear:
        _classify(task, None)
        said.append("classification cleared (timeframe stands)")
    if not said:
        raise GatewayInputError(
            Problem(Kind.REQUIRED, "Parameters", "a CN review sets at least one of: suitability, clear-classification, priority, timeframe")
        )
    return OpResult(task, "CN review: " + "; ".join(said), tuple(rule_ids))


def record_contact_attempt(task: dict[str, Any], p: Params, rules: ServiceRules, now: datetime) -> OpResult:
    """CAS-10: a call finding new or worsening concern -> Urgent CN Review; CAS-11: failed contacts counted, then review."""
    kind = p.code("kind", ("safety-call", "callback"), required=True)
    outcome = p.code("outcome", ("success", "failed", "new-concern"), required=True)
    failed = int(_input_value(task, "failed-contacts") or 0)
    rule_ids: tuple[str, ...]
    if outcome == "new-concern":
        _classify(task, "urgent-cn-review")
        summary, rule_ids = f"{kind}: new or worsening concern: classified Urgent CN Review", ("CAS-10",)
        failed = 0
    elif outcome == "success":
        summary, rule_ids = f"{kind}: contact made", ("CAS-11",)
        failed = 0
    else:
        failed += 1
        limit = rules.failed_contacts.attempts
        if failed >= limit:
            summary = f"{kind}: failed contact {failed} of {limit}: no contact after {limit} attempts, for practitioner review"
            _set_input(task, "practitioner-review", "Failed contacts: for practitioner review", valueBoolean=True)
        else:
            summary = f"{kind}: failed contact {failed} of {limit}: call handlers to retry"
        rule_ids = ("CAS-11",)
    _set_input(task, "failed-contacts", "Failed contact attempts since the last contact", valueInteger=failed)
    return OpResult(task, summary, rule_ids)


def known_service(task: dict[str, Any], p: Params, rules: ServiceRules, now: datetime) -> OpResult:
    """CAS-12: document the usual provider; the patient agrees (transfer, CN closes) or declines (stays queued)."""
    step = p.code("step", ("document", "agreed", "declined", "close"), required=True)
    current = classification(task)
    needs = {"agreed": "refer-to-known-service", "declined": "refer-to-known-service", "close": "referred-to-known-service"}
    if step in needs and current != needs[step]:
        raise _refuse(
            f"CAS-12: '{step}' needs classification {codes.CLASSIFICATION_DISPLAY[needs[step]]!r}, the case has "
            f"{codes.CLASSIFICATION_DISPLAY.get(current or '', 'none')!r}",
            "Task.businessStatus",
        )
    if step == "document":
        provider = p.string("provider", required=True)
        _classify(task, "refer-to-known-service")
        _set_input(task, "usual-provider", "Usual mental health provider", valueString=provider)
        summary = f"known service: usual provider {provider}: Refer to a Known Service"
    elif step == "agreed":
        _classify(task, "referred-to-known-service")
        summary = "known service: patient agreed and was transferred: Referred to Known Service"
    elif step == "declined":
        _classify(task, None)
        summary = "known service: patient declined transfer: classification edited, stays for the standard callback"
    else:
        task["status"] = "completed"
        summary = "known service: closed by the Clinical Navigator after transfer"
    return OpResult(task, summary, ("CAS-12",))


def end_assessment(task: dict[str, Any], p: Params, rules: ServiceRules, now: datetime) -> OpResult:
    """CAS-13: registered completes, unregistered awaits CN ratification; CAS-14: physical-health follow-up queue.

    The two hold together: an unregistered practitioner's consultation that also asks for a physical-health follow-up
    is classified Urgent Follow Up (CAS-14) AND keeps its ratification mark (CAS-13, the `awaiting-ratification` input),
    so neither the follow-up nor the registered practitioner's ratification is lost.
    """
    registered = p.boolean("registered", required=True)
    notes = p.string("notes", required=True)
    follow_up = p.boolean("physical-health-follow-up") or False
    who = p.string("practitioner", required=True)
    if awaiting_ratification(task):
        raise _refuse("CAS-13: the case awaits ratification of an unregistered consultation: a registered practitioner uses $ratify")
    encounter = _consultation(task, who or "", bool(registered), now)
    record = _consultation_notes(task, encounter, who or "", notes or "", now)
    _set_input(task, "consultation-notes", "Consultation notes (for CLEO and RiO)", valueString=notes)
    _consultation_outcome(task, p)
    if not registered:
        _set_input(task, RATIFICATION_MARK, "Unregistered consultation awaiting ratification (CAS-13)", valueBoolean=True)
    if follow_up:
        _classify(task, "urgent-follow-up")
        summary = "end assessment: physical-health follow-up requested: Urgent Follow Up queue"
        if registered:
            return OpResult(task, summary, ("CAS-14",), [encounter, record])
        return OpResult(
            task,
            summary + "; by an unregistered practitioner: stays on the queue for CN ratification",
            ("CAS-13", "CAS-14"),
            [encounter, record],
        )
    if registered:
        task["status"] = "completed"
        return OpResult(task, "end assessment by a registered practitioner: case completed", ("CAS-13",), [encounter, record])
    _classify(task, "awaiting-ratification")
    return OpResult(
        task, "end assessment by an unregistered practitioner: stays on the queue for CN ratification", ("CAS-13",), [encounter, record]
    )


def ratify(task: dict[str, Any], p: Params, rules: ServiceRules, now: datetime) -> OpResult:
    """CAS-13: a registered practitioner ratifies an unregistered practitioner's consultation; the case completes.

    CAS-14: when the consultation also asked for a physical-health follow-up, the ratification is recorded and the case
    stays in Urgent Follow Up for the shift manager to move to the relevant team (ratifying never drops the follow-up).
    """
    if not p.boolean("registered", required=True):
        raise _refuse("CAS-13: only a registered practitioner may ratify", "Parameters.parameter.where(name='registered')")
    if not awaiting_ratification(task):
        raise _refuse("CAS-13: there is no unregistered consultation awaiting ratification on this case", "Task.businessStatus")
    _consultation_outcome(task, p)
    task["input"] = [i for i in task.get("input", []) if i["type"]["coding"][0]["code"] != RATIFICATION_MARK]
    if not task["input"]:
        del task["input"]
    if classification(task) == "urgent-follow-up":
        return OpResult(
            task,
            "ratified by a registered practitioner: the physical-health follow-up stands: stays in the Urgent Follow Up queue",
            ("CAS-13", "CAS-14"),
        )
    _classify(task, None)
    task["status"] = "completed"
    return OpResult(task, "ratified by a registered practitioner: case completed", ("CAS-13",))


def awaiting_ratification(task: dict[str, Any]) -> bool:
    """CAS-13: an unregistered consultation awaits a registered practitioner's ratification (the mark, or the
    classification alone on cases stored before the mark existed)."""
    return bool(_input_value(task, RATIFICATION_MARK)) or classification(task) == "awaiting-ratification"


def _consultation(task: dict[str, Any], who: str, registered: bool, now: datetime) -> dict[str, Any]:
    version = str(len(task.get("note", [])))
    return {
        "resourceType": "Encounter",
        "id": resource_id("Encounter", f"Task/{task['id']}", f"consultation-{version}"),
        "meta": {"profile": [f"{codes.UKCORE}Encounter"]},
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "VR", "display": "virtual"},
        "type": [{"text": f"CAS consultation ({'registered' if registered else 'unregistered'} practitioner)"}],
        "subject": task["for"],
        "basedOn": [task["focus"]],
        "participant": [{"individual": {"display": who}}],
        "period": {"start": to_fhir_instant(now), "end": to_fhir_instant(now)},
    }


def _consultation_notes(task: dict[str, Any], encounter: dict[str, Any], who: str, notes: str, now: datetime) -> dict[str, Any]:
    """CAS-13: the consultation notes as a document related to the case (for CLEO and RiO)."""
    return {
        "resourceType": "DocumentReference",
        "id": resource_id("DocumentReference", f"Encounter/{encounter['id']}", "notes"),
        "meta": {"profile": [f"{codes.UKCORE}DocumentReference"]},
        "status": "current",
        "type": {"text": "CAS consultation notes"},
        "subject": task["for"],
        "date": to_fhir_instant(now),
        "author": [{"display": who}],
        "content": [{"attachment": {"contentType": "text/plain; charset=utf-8", "data": base64.b64encode(notes.encode()).decode()}}],
        "context": {"encounter": [{"reference": f"Encounter/{encounter['id']}"}], "related": [{"reference": f"Task/{task['id']}"}]},
    }


Operation = Callable[[dict[str, Any], Params, ServiceRules, datetime], OpResult]
OPERATIONS: dict[str, Operation] = {
    "cn-review": cn_review,
    "record-contact-attempt": record_contact_attempt,
    "known-service": known_service,
    "end-assessment": end_assessment,
    "ratify": ratify,
}


def apply_operation(name: str, task: dict[str, Any], p: Params, rules: ServiceRules, now: datetime) -> OpResult:
    """Run operation `name` on a copy of `task`; closed cases take no operation."""
    if task.get("status") not in OPEN:
        raise _refuse(f"the case is {task.get('status')}: no further operations")
    p.string("practitioner", required=True)
    working = {k: v for k, v in copy.deepcopy(task).items() if k != "meta"}
    result = OPERATIONS[name](working, p, rules, now)
    working["lastModified"] = to_fhir_instant(now)
    working.setdefault("note", []).append({"authorString": p.string("practitioner"), "time": to_fhir_instant(now), "text": result.summary})
    return result
