"""GP letters a CAS case owes, as letter requests (FHIR CommunicationRequests, docs/letters.md).

- CAS-13: a case that completes owes the GP practice a consultation report.
- CAS-15: an out-of-hours Mental Health Specialist Desk case, when it completes, must have its notes
  (with the RiO notes) sent to the patient's GP practice; notes that arrive later are added to the
  request while it is still pending (a replacement letter follows).
The request is addressed to the registered practice by ODS code, or to `V81999` (practice not known)
when there is none on record: MESH automatic routing then finds the practice.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from common import codes
from common.datetimes import to_fhir_instant
from fhir_mapping.fhir import CommunicationRequest, build, to_json_dict
from fhir_mapping.ids import resource_id
from fhir_mapping.letters.request import RULE_SYSTEM, UNKNOWN_PRACTICE
from fhir_mapping.letters.types import LETTER_TYPE_SYSTEM, letter_types

__all__ = ["gp_letter_request", "notification_id", "consultation_report_id", "with_document"]


def notification_id(task_id: str) -> str:
    """CAS-15: the Specialist Desk notification of a case (one per case)."""
    return resource_id("CommunicationRequest", f"Task/{task_id}", "gp-notification")


def consultation_report_id(task_id: str) -> str:
    """CAS-13: the consultation report of a completed case (one per case)."""
    return resource_id("CommunicationRequest", f"Task/{task_id}", "consultation-report")


def with_document(request: dict[str, Any], document_ref: str) -> dict[str, Any]:
    """A pending request with one more document to report (a RiO note that arrived after completion)."""
    about = request.get("about", [])
    if {"reference": document_ref} in about:
        return request
    return {k: v for k, v in request.items() if k != "meta"} | {"about": [*about, {"reference": document_ref}]}


def gp_letter_request(
    request_id: str,
    letter_type: str,
    task: dict[str, Any],
    patient: dict[str, Any] | None,
    about: list[str],
    practitioner: str | None,
    now: datetime,
) -> dict[str, Any]:
    """The letter request to the patient's GP practice about a CAS case, from its provider (Task.owner)."""
    entry = letter_types()[letter_type]
    gp = next(iter((patient or {}).get("generalPractitioner", [])), None)
    practice = (gp or {}).get("identifier", {}).get("value") or UNKNOWN_PRACTICE
    owner = (task.get("owner") or {}).get("identifier") or {}
    request = build(
        CommunicationRequest,
        id=request_id,
        status="active",
        category=[{"coding": [{"system": LETTER_TYPE_SYSTEM, "code": letter_type, "display": entry.description}]}],
        priority="routine",
        subject=task["for"],
        about=[{"reference": ref} for ref in about],
        recipient=[{"identifier": {"system": codes.ODS_ORG, "value": practice}}],
        sender={"identifier": owner, "display": (task.get("owner") or {}).get("display")} if owner.get("value") else None,
        requester={"display": practitioner} if practitioner else None,
        authoredOn=to_fhir_instant(now),
        reasonCode=[{"coding": [{"system": RULE_SYSTEM, "code": rule} for rule in entry.rules], "text": entry.description}],
        note=None if gp else [{"text": "No registered GP practice on record: addressed to V81999 for MESH automatic routing"}],
    )
    return to_json_dict(request)
