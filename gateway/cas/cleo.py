"""CLEO both ways: a case rendered in CLEO's shape (export), and CLEO updates applied as case operations.

Notes flow both ways (CAS-13): consultation notes recorded through the gateway are documents
related to the case and appear in the export; an update from CLEO becomes the matching
operation, obeying its rules, in the same transaction as the message record (a re-sent
update id gets its original reply and changes nothing).
"""

from __future__ import annotations

import base64
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from adapters.cleo import parse_cleo_update
from adapters.problems import GatewayInputError, Kind, Problem
from common import codes
from gateway.cas.cases import CaseOperations
from gateway.cas.rules.ops import Params
from gateway.platform.audit import note
from gateway.platform.clock import Clock
from gateway.platform.messages import Inbound, Reply, commit_message, previous, resend_or_refuse
from gateway.platform.security.principal import require_service
from gateway.platform.store.models import ResourceRow
from gateway.platform.store.repo import ResourceQuery, get_resource, search_resources

__all__ = ["CleoLink", "export_case", "CHANNEL_CLEO"]

CHANNEL_CLEO = "cleo"


def export_case(session: Session, task_id: str) -> dict[str, Any]:
    """Task/{task_id} in CLEO's case shape (`cleo-case/1`, docs/formats/cleo.md)."""
    task = get_resource(session, "Task", task_id)
    row = session.get(ResourceRow, ("Task", task_id))
    if task is None or row is None or row.service_id is None:
        raise GatewayInputError(Problem(Kind.NOT_FOUND, "id", f"Task/{task_id[:64]} is not a CAS queue case"))
    require_service(row.service_id)  # CLEO bound to one service sees only its cases
    patient = get_resource(session, "Patient", task["for"]["reference"].split("/", 1)[1]) or {}
    note(task)
    related: list[tuple[str, str | None, str]] = [("related", None, f"Task/{task_id}")]
    documents, _ = search_resources(session, ResourceQuery("DocumentReference", tokens=related, count=1000))
    inputs = {i["type"]["coding"][0]["code"]: next(v for k, v in i.items() if k.startswith("value")) for i in task.get("input", [])}
    classification = ((task.get("businessStatus") or {}).get("coding") or [{}])[0].get("code")
    return {
        "format": "cleo-case/1",
        "case_ref": task_id,
        "service": row.service_id,
        "status": "completed" if task["status"] == "completed" else "open",
        "priority": task.get("priority"),
        "timeframe_minutes": (inputs.get("callback-timeframe") or {}).get("value"),
        "breach_time": task["restriction"]["period"]["end"],
        "classification": codes.CLASSIFICATION_DISPLAY.get(classification or "", ""),
        "pinked": bool(inputs.get("pinked")),
        "suitability": ((task.get("performerType") or [{}])[0].get("coding") or [{}])[0].get("code"),
        "channel": inputs.get("source-channel"),
        "patient": {"nhs_number": patient.get("identifier", [{}])[0].get("value")},
        "consultations": [
            {
                "at": d["date"],
                "practitioner": (d.get("author") or [{}])[0].get("display"),
                "source": "RiO" if d["type"]["text"] != "CAS consultation notes" else "CAS",
                "notes": base64.b64decode(d["content"][0]["attachment"]["data"]).decode(),
            }
            for d in sorted(documents, key=lambda d: d["date"])
        ],
        "failed_contacts": inputs.get("failed-contacts", 0),
        "case_notes": [{"at": n.get("time"), "by": n.get("authorString"), "text": n["text"]} for n in task.get("note", [])],
    }


class CleoLink:
    def __init__(self, sessions: sessionmaker[Session], cases: CaseOperations, clock: Clock) -> None:
        self.sessions = sessions
        self.cases = cases
        self.clock = clock

    def receive_update(self, raw: bytes) -> Reply:
        update = parse_cleo_update(raw)
        original = previous(self.sessions, CHANNEL_CLEO, update.update_id)
        if original is not None:
            return resend_or_refuse(original, raw, "update_id")
        now = self.clock.now()
        applied: dict[str, Any] = {}

        def write(session: Session) -> list[tuple[dict[str, Any], str | None]]:
            self.cases.apply_in(session, update.case_ref, update.operation, Params(update.parameters), now)
            applied["case"] = export_case(session, update.case_ref)
            return []

        return commit_message(
            self.sessions,
            Inbound(CHANNEL_CLEO, update.update_id, raw),
            now,
            write,
            lambda _s, _c: Reply(200, applied["case"]),
            on_race=lambda racing: resend_or_refuse(racing, raw, "update_id"),
        )
