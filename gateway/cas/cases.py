"""Operations on CAS queue cases, each stored with a Provenance (who, when, which rules, why); and $explain."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.orm import Session, sessionmaker

from adapters.jsonparse import parse_json_object
from adapters.problems import GatewayInputError, Kind, Problem
from common.datetimes import to_fhir_instant
from fhir_mapping.notifications import consultation_report_id, gp_letter_request, notification_id
from fhir_mapping.provenance import RULE_SYSTEM, provenance
from gateway.cas.rules.ops import OPERATIONS, Params, apply_operation, parse_parameters
from gateway.cas.rules.schema import RuleRegistry
from gateway.epr.rules.sender_schema import SenderRegistry
from gateway.platform.audit import note
from gateway.platform.clock import Clock
from gateway.platform.security.principal import require_service
from gateway.platform.store.db import write_transaction
from gateway.platform.store.models import ResourceRow
from gateway.platform.store.repo import ResourceQuery, get_for_update, get_resource, put_resource, search_resources

__all__ = ["CaseOperations", "provenance", "explain", "explain_resource", "RULE_SYSTEM", "is_specialist_desk"]

log = structlog.get_logger("iap.cases")


class CaseOperations:
    def __init__(
        self, sessions: sessionmaker[Session], registry: RuleRegistry, clock: Clock, senders: SenderRegistry | None = None
    ) -> None:
        self.sessions = sessions
        self.registry = registry
        self.clock = clock
        self.senders = senders or SenderRegistry([])  # whose `destination` gets the notes back (CAS-13)

    def run(self, task_id: str, name: str, raw: bytes) -> dict[str, Any]:
        """Apply operation `name` to Task `task_id`; the new Task version, or GatewayInputError and nothing changed."""
        params = parse_parameters(parse_json_object(raw, "Parameters"))
        with write_transaction(self.sessions) as session:
            return self.apply_in(session, task_id, name, params, self.clock.now())

    def apply_in(self, session: Session, task_id: str, name: str, params: Params, now: datetime) -> dict[str, Any]:
        """The operation inside the caller's transaction (so a CLEO update and its message record commit together)."""
        if name not in OPERATIONS:
            raise GatewayInputError(
                Problem(Kind.NOT_SUPPORTED, "operation", f"unknown operation ${name[:40]}; known: {sorted(OPERATIONS)}")
            )
        task, service_id = get_for_update(session, "Task", task_id) or ({}, None)
        if service_id is None:
            raise GatewayInputError(Problem(Kind.NOT_FOUND, "id", f"Task/{task_id[:64]} is not a CAS queue case"))
        require_service(service_id)  # a client bound to one service works only its cases
        rules = self.registry.services[service_id]
        result = apply_operation(name, task, params, rules, now)
        who = params.string("practitioner") or ""
        stored, _ = put_resource(session, result.task, now, service_id)
        for extra in result.extra:
            put_resource(session, extra, now, service_id)  # what an operation writes belongs to the case's service
        if name == "record-contact-attempt" and params.values.get("safety-call"):
            _complete_safety_call(session, task_id, params.values["safety-call"], now, service_id)
        if stored["status"] == "completed":
            _request_gp_letter(session, stored, who, now, service_id)
        registered_end = name == "end-assessment" and params.values.get("registered") is True
        if stored["status"] == "completed" or registered_end or name == "ratify":  # ratified: the notes stand (CAS-13, CAS-14)
            _send_notes_to_epr(session, stored, who, self.senders, now, service_id)
        put_resource(session, provenance(stored, name, who, result.rule_ids, result.summary, now), now, service_id)
        log.info("case.operation", operation=name, rules=list(result.rule_ids), status=stored["status"])
        return stored


def _request_gp_letter(session: Session, task: dict[str, Any], who: str, now: datetime, service_id: str) -> None:
    """The GP letter a completed case owes, in the same transaction as the completion, so it cannot be lost.

    CAS-15: a Specialist Desk case sends its notes with the RiO notes; CAS-13: any other case a consultation report.
    """
    from gateway.letters.outbox.letters import request_letter  # the outbox builds on cases (provenance): imported late

    patient = get_resource(session, "Patient", task["for"]["reference"].split("/", 1)[1])
    related: list[tuple[str, str | None, str]] = [("related", None, f"Task/{task['id']}")]
    notes, _ = search_resources(session, ResourceQuery("DocumentReference", tokens=related, count=1000))
    about = [f"Task/{task['id']}", task["focus"]["reference"], *[f"DocumentReference/{d['id']}" for d in notes]]
    if is_specialist_desk(task):
        request = gp_letter_request(notification_id(task["id"]), "specialist-desk-notes", task, patient, about, who or None, now)
        activity, rules, summary = "gp-notification", ("CAS-15",), "GP notification with the RiO notes queued for delivery"
    else:
        request = gp_letter_request(consultation_report_id(task["id"]), "cas-consultation-report", task, patient, about, who or None, now)
        activity, rules, summary = "gp-letter", ("CAS-13",), "consultation report queued for delivery to the GP practice"
    letter = request_letter(session, request, now, service_id)
    record = provenance(letter, activity, who, rules, summary, now)
    record["target"].append({"reference": f"Task/{task['id']}"})
    put_resource(session, record, now, service_id)


def _send_notes_to_epr(session: Session, task: dict[str, Any], who: str, senders: SenderRegistry, now: datetime, service_id: str) -> None:
    """CAS-13: the consultation notes to the patient's RiO record, queued in the same transaction as the operation ending
    the consultation (a registered practitioner's end of assessment; a ratification or any completion for the rest)."""
    from gateway.letters.outbox.epr import queue_notes  # the outbox builds on cases (provenance): imported late

    queued = queue_notes(session, task, senders, service_id, now)
    if queued:
        summary = f"consultation notes queued for the patient's EPR record ({len(queued)} delivery(ies))"
        put_resource(session, provenance(task, "epr-notes", who, ("CAS-13",), summary, now), now, service_id)


def is_specialist_desk(task: dict[str, Any]) -> bool:
    return any(i["type"]["coding"][0]["code"] == "specialist-desk" and i.get("valueBoolean") for i in task.get("input", []))


def _complete_safety_call(session: Session, case_id: str, reference: Any, now: datetime, service_id: str) -> None:
    """The safety call this contact attempt answers is done (it must belong to this case)."""
    ref = reference.get("reference") if isinstance(reference, dict) else reference
    element = "Parameters.parameter.where(name='safety-call')"
    call = get_resource(session, "Task", str(ref).removeprefix("Task/")) if isinstance(ref, str) else None
    if call is None or {"reference": f"Task/{case_id}"} not in call.get("basedOn", []):
        raise GatewayInputError(Problem(Kind.VALUE, element, f"{str(ref)[:80]} is not a safety call of Task/{case_id}"))
    if call["status"] != "completed":
        call = {k: v for k, v in call.items() if k != "meta"} | {"status": "completed", "lastModified": to_fhir_instant(now)}
        put_resource(session, call, now, service_id)


def explain(session: Session, task_id: str) -> dict[str, Any]:
    """Every decision on a CAS case in plain words: the intake rules, then each operation and automatic action, in order."""
    return explain_resource(session, "Task", task_id)


def explain_resource(session: Session, resource_type: str, resource_id_: str) -> dict[str, Any]:
    """Every recorded decision on a resource (Provenance targets): when, what, which rules and rule file version, who, why."""
    row = session.get(ResourceRow, (resource_type, resource_id_))
    if row is None:
        raise GatewayInputError(Problem(Kind.NOT_FOUND, "id", f"{resource_type}/{resource_id_[:64]} is not known"))
    if row.service_id:
        require_service(row.service_id)  # a client bound to one service explains only its own cases
    note(json.loads(row.content))
    ref = f"{resource_type}/{resource_id_}"
    steps = []
    records, _ = search_resources(session, ResourceQuery("Provenance", tokens=[("target", None, ref)], count=10_000))
    for record in sorted(records, key=lambda r: (r["recorded"], r["id"])):
        rules = ", ".join(c["code"] for c in record["reason"][0].get("coding", []))
        who = record["agent"][0]["who"].get("display", "")
        activity = record["activity"]["coding"][0]["code"]
        policy = f" [{', '.join(record['policy'])}]" if record.get("policy") else ""
        steps.append(f"{record['recorded']} {activity} ({rules}){policy} by {who}: {record['reason'][0]['text']}")
    key = resource_type[0].lower() + resource_type[1:]
    versions = [{"name": "rules-version", "valueString": line} for line in _rule_versions(session, json.loads(row.content), records)]
    return {
        "resourceType": "Parameters",
        "parameter": [{"name": key, "valueReference": {"reference": ref}}]
        + [{"name": "step", "valueString": step} for step in steps]
        + versions,
    }


_LABEL = re.compile(r"\(([a-z0-9-]{2,64} (?:cas-queue|pathway) [^()]{1,64})\)$")


def _rule_versions(session: Session, resource: dict[str, Any], records: list[dict[str, Any]]) -> list[str]:
    """Each rule file version named by the resource (Task input `rule-set`) or its decisions (Provenance agent), with
    when and by whom it was activated (issue 37, gateway.rules.history)."""
    from gateway.rules.history import activation_of  # rule history builds on the store and audit: imported late

    labels = [i.get("valueString", "") for i in resource.get("input", []) if i["type"]["coding"][0]["code"] == "rule-set"]
    for record in records:
        found = _LABEL.search(record["agent"][0]["who"].get("display", ""))
        if found:
            labels.append(found.group(1))
    lines = []
    for label in dict.fromkeys(label for label in labels if label):
        activation = activation_of(session, label)
        if activation is None:
            lines.append(f"{label}: the rule file shipped with the gateway (not activated with `iap-gateway rules activate`)")
        else:
            lines.append(f"{label}: activated {to_fhir_instant(activation.activated_at)} by {activation.activated_by}")
    return lines
