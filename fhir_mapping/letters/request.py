"""A letter request (FHIR CommunicationRequest, docs/letters.md) -> a checked `LetterRequest`, or every problem at once.

The contract: status `active`; `category[0].coding[0]` a letter type
(`https://fhir.iap-gateway.org/CodeSystem/letter-type`); `subject` the Patient; `recipient` the GP
practice or referrer as an Organization with its ODS code, and/or the Patient (a copy to the client,
TT-14); `about` the resources the letter reports; `reasonCode` the domain rules (codings in
`https://fhir.iap-gateway.org/CodeSystem/domain-rule`); optional `payload[].contentString` lines
(and `payload[].contentReference`, read as more `about`); `authoredOn` with an offset; optional
`sender` (Organization with ODS code) and `requester` (who signs the letter, by display).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from adapters.problems import GatewayInputError, Kind, ProblemList
from common import codes
from common.datetimes import parse_source_datetime
from fhir_mapping.fhir import CommunicationRequest
from fhir_mapping.letters.types import LETTER_TYPE_SYSTEM, LetterType, letter_types

__all__ = ["LetterRequest", "Recipient", "parse_letter_request", "ABOUT_TYPES", "RULE_SYSTEM", "UNKNOWN_PRACTICE"]

RULE_SYSTEM = f"{codes.GATEWAY_BASE}/CodeSystem/domain-rule"
ABOUT_TYPES = (
    "EpisodeOfCare",
    "Encounter",
    "Observation",
    "CarePlan",
    "ServiceRequest",
    "Task",
    "DocumentReference",
    "QuestionnaireResponse",
    "Flag",
)
UNKNOWN_PRACTICE = "V81999"  # ODS "GP practice code not known" (MH ToC, nhs-standards §4.2): route by MESH GP lookup
_RULE_ID = re.compile(r"^(CAS|PC|TT)-\d{2}$")
_ODS = re.compile(r"^[A-Z0-9]{3,10}$")
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_REF = re.compile(r"^(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})$")


@dataclass(frozen=True)
class Recipient:
    """Who the letter goes to: an organisation by ODS code (GP practice or referrer), or the patient (a copy)."""

    ods: str | None
    patient: bool
    display: str | None = None

    @property
    def key(self) -> str:
        return "patient" if self.patient else f"ods:{self.ods}"


@dataclass(frozen=True)
class LetterRequest:
    id: str
    letter_type: LetterType
    patient_id: str
    recipients: tuple[Recipient, ...]
    about: tuple[str, ...]  # "Type/id", in the order given
    rule_ids: tuple[str, ...]
    lines: tuple[str, ...]
    authored_on: datetime
    sender_ods: str | None
    sender_name: str | None
    signed_by: str | None


def parse_letter_request(resource: Any) -> LetterRequest:
    """Check a CommunicationRequest against the letter contract; GatewayInputError names each failing element."""
    problems = ProblemList()
    where = "CommunicationRequest"
    if not isinstance(resource, dict) or resource.get("resourceType") != "CommunicationRequest":
        raise GatewayInputError(problems_of(Kind.STRUCTURE, "resourceType", "a letter is requested with a CommunicationRequest"))
    try:
        CommunicationRequest.model_validate(resource)
    except ValidationError as exc:
        for error in exc.errors()[:10]:
            location = ".".join(str(p) for p in error["loc"] if not str(p).startswith("function"))
            problems.error(Kind.STRUCTURE, f"{where}.{location}" if location else where, error["msg"])
        problems.raise_if_errors("parse")
    request_id = resource.get("id")
    if not isinstance(request_id, str) or not _ID.match(request_id):
        problems.error(Kind.REQUIRED, f"{where}.id", "a letter request needs a stable id (it names the letter)")
    if resource.get("status") != "active":
        problems.error(Kind.VALUE, f"{where}.status", f"must be 'active' to request a letter (got {str(resource.get('status'))[:20]!r})")
    letter_type = _letter_type(resource, problems)
    patient_id = _patient(resource, problems)
    recipients = _recipients(resource, patient_id, problems)
    about = _about(resource, problems)
    rule_ids = _rules(resource, problems)
    lines = _lines(resource, problems)
    authored = _authored(resource, problems)
    sender_ods, sender_name = _sender(resource, problems)
    problems.raise_if_errors("parse")
    assert letter_type is not None and patient_id is not None and authored is not None
    requester = resource.get("requester") or {}
    return LetterRequest(
        id=str(request_id),
        letter_type=letter_type,
        patient_id=patient_id,
        recipients=tuple(recipients),
        about=tuple(about),
        rule_ids=tuple(rule_ids),
        lines=tuple(lines),
        authored_on=authored,
        sender_ods=sender_ods,
        sender_name=sender_name,
        signed_by=requester.get("display") if isinstance(requester.get("display"), str) else None,
    )


def problems_of(kind: Kind, element: str, message: str) -> list[Any]:
    problems = ProblemList()
    problems.error(kind, element, message)
    return problems.items


def _letter_type(resource: dict[str, Any], problems: ProblemList) -> LetterType | None:
    element = "CommunicationRequest.category[0].coding[0]"
    coding = ((resource.get("category") or [{}])[0].get("coding") or [{}])[0]
    if coding.get("system") != LETTER_TYPE_SYSTEM:
        problems.error(Kind.REQUIRED, f"{element}.system", f"the first category coding must be from {LETTER_TYPE_SYSTEM}")
        return None
    found = letter_types().get(str(coding.get("code")))
    if found is None:
        problems.error(
            Kind.NOT_SUPPORTED, f"{element}.code", f"unknown letter type {str(coding.get('code'))[:40]!r}; known: {sorted(letter_types())}"
        )
    return found


def _patient(resource: dict[str, Any], problems: ProblemList) -> str | None:
    match = _REF.match(str((resource.get("subject") or {}).get("reference") or ""))
    if not match or match["type"] != "Patient":
        problems.error(Kind.REQUIRED, "CommunicationRequest.subject.reference", "the letter's subject must be a Patient reference")
        return None
    return match["id"]


def _recipients(resource: dict[str, Any], patient_id: str | None, problems: ProblemList) -> list[Recipient]:
    out: list[Recipient] = []
    recipients = resource.get("recipient") or []
    if not recipients:
        problems.error(
            Kind.REQUIRED, "CommunicationRequest.recipient", "a letter needs a recipient (the GP practice or referrer by ODS code)"
        )
    for index, recipient in enumerate(recipients):
        element = f"CommunicationRequest.recipient[{index}]"
        reference = str(recipient.get("reference") or "")
        identifier = recipient.get("identifier") or {}
        display = recipient.get("display") if isinstance(recipient.get("display"), str) else None
        if reference.startswith("Patient/"):
            if patient_id is not None and reference != f"Patient/{patient_id}":
                problems.error(Kind.VALUE, f"{element}.reference", "a copy to a patient goes only to the letter's subject")
            else:
                out.append(Recipient(None, True, display))
        elif identifier.get("system") == codes.ODS_ORG and _ODS.match(str(identifier.get("value") or "")):
            out.append(Recipient(str(identifier["value"]), False, display))
        else:
            problems.error(
                Kind.VALUE,
                f"{element}.identifier",
                f"a recipient is an Organization identified by its ODS code ({codes.ODS_ORG}) or the subject Patient",
            )
    if len({r.key for r in out}) != len(out):
        problems.error(Kind.VALUE, "CommunicationRequest.recipient", "the same recipient is named twice")
    return out


def _about(resource: dict[str, Any], problems: ProblemList) -> list[str]:
    refs: list[tuple[str, str]] = [
        (f"CommunicationRequest.about[{i}]", str(a.get("reference") or "")) for i, a in enumerate(resource.get("about") or [])
    ]
    refs += [
        (f"CommunicationRequest.payload[{i}].contentReference", str(p["contentReference"].get("reference") or ""))
        for i, p in enumerate(resource.get("payload") or [])
        if "contentReference" in p
    ]
    out: list[str] = []
    for element, ref in refs:
        match = _REF.match(ref)
        if not match or match["type"] not in ABOUT_TYPES:
            problems.error(Kind.VALUE, f"{element}.reference", f"{ref[:80]!r} is not a reference to one of {list(ABOUT_TYPES)}")
        elif ref not in out:
            out.append(ref)
    return out


def _rules(resource: dict[str, Any], problems: ProblemList) -> list[str]:
    rules = [
        str(c.get("code"))
        for reason in resource.get("reasonCode") or []
        for c in reason.get("coding") or []
        if c.get("system") == RULE_SYSTEM
    ]
    if not rules:
        problems.error(
            Kind.REQUIRED, "CommunicationRequest.reasonCode", f"name the domain rule(s) that call for this letter ({RULE_SYSTEM})"
        )
    for rule in rules:
        if not _RULE_ID.match(rule):
            problems.error(Kind.VALUE, "CommunicationRequest.reasonCode.coding.code", f"{rule[:20]!r} is not a rule id such as TT-14")
    return list(dict.fromkeys(rules))


def _lines(resource: dict[str, Any], problems: ProblemList) -> list[str]:
    lines = []
    for index, payload in enumerate(resource.get("payload") or []):
        if "contentString" in payload:
            text = payload["contentString"]
            if not isinstance(text, str) or not text.strip():
                problems.error(Kind.VALUE, f"CommunicationRequest.payload[{index}].contentString", "a text line must not be empty")
            else:
                lines.append(text.strip())
    return lines


def _authored(resource: dict[str, Any], problems: ProblemList) -> datetime | None:
    value = resource.get("authoredOn")
    if value is None:
        problems.error(Kind.REQUIRED, "CommunicationRequest.authoredOn", "when the letter was requested (with a UTC offset)")
        return None
    try:
        return parse_source_datetime(value)
    except ValueError as exc:
        problems.error(Kind.VALUE, "CommunicationRequest.authoredOn", str(exc))
        return None


def _sender(resource: dict[str, Any], problems: ProblemList) -> tuple[str | None, str | None]:
    sender = resource.get("sender")
    if not sender:
        return None, None
    identifier = sender.get("identifier") or {}
    if identifier.get("system") != codes.ODS_ORG or not _ODS.match(str(identifier.get("value") or "")):
        problems.error(
            Kind.VALUE, "CommunicationRequest.sender.identifier", f"the sending organisation is named by its ODS code ({codes.ODS_ORG})"
        )
        return None, None
    return str(identifier["value"]), sender.get("display") if isinstance(sender.get("display"), str) else None
