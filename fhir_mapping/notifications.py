"""Pending GP notifications, recorded durably as FHIR CommunicationRequests (delivered by the outbox, later).

CAS-15: an out-of-hours Mental Health Specialist Desk case, when it completes, must have its
notes (with the RiO notes) sent to the patient's GP practice.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fhir_mapping import codes
from fhir_mapping.datetimes import to_fhir_instant
from fhir_mapping.fhir import CommunicationRequest, build, to_json_dict
from fhir_mapping.ids import resource_id

__all__ = ["specialist_desk_gp_notification", "notification_id", "with_document"]


def notification_id(task_id: str) -> str:
    return resource_id("CommunicationRequest", f"Task/{task_id}", "gp-notification")


def with_document(request: dict[str, Any], document_ref: str) -> dict[str, Any]:
    """A pending notification with one more attached document (a RiO note that arrived after completion)."""
    payload = request.get("payload", [])
    if any(p.get("contentReference", {}).get("reference") == document_ref for p in payload):
        return request
    return {k: v for k, v in request.items() if k != "meta"} | {"payload": [*payload, {"contentReference": {"reference": document_ref}}]}


def specialist_desk_gp_notification(
    task: dict[str, Any], patient: dict[str, Any] | None, now: datetime, documents: tuple[str, ...] | list[str] = ()
) -> dict[str, Any]:
    """The GP notification a completed Specialist Desk case owes (one per case: a stable id), with the RiO notes."""
    gp = next(iter((patient or {}).get("generalPractitioner", [])), None)
    recipient = [gp] if gp else None
    request = build(
        CommunicationRequest,
        id=notification_id(task["id"]),
        status="active",
        category=[{"coding": [{"system": codes.CAS_TASK_TYPE, "code": "gp-notification", "display": "GP notification"}]}],
        priority="routine",
        subject=task["for"],
        about=[{"reference": f"Task/{task['id']}"}],
        recipient=recipient,
        payload=[
            {"contentString": "Mental Health Specialist Desk case completed out of hours: consultation notes and the RiO notes (CAS-15)"},
            {"contentReference": {"reference": f"Task/{task['id']}"}},
            *[{"contentReference": {"reference": ref}} for ref in documents],
        ],
        authoredOn=to_fhir_instant(now),
        reasonCode=[{"text": "CAS-15: Specialist Desk notes are sent to the GP practice when the case completes"}],
        note=None if gp else [{"text": "The patient's GP practice is not known: the notification cannot be addressed yet"}],
    )
    return to_json_dict(request)
