"""Request a letter: the one entry point for every letter the gateway sends (docs/letters.md).

`request_letter(session, communication_request, now)` runs inside the caller's transaction, so the
letter and its deliveries commit with the event that caused them, or not at all. It stores:
the CommunicationRequest; the canonical R4 document Bundle (`Bundle/<letter id>`); the letter's
DocumentReference (the PDF rendition inline, the document by reference); one outbox row per
recipient; and a Provenance naming the rules. The same request again is the same letter (nothing
new). A changed request (e.g. a RiO note attached after completion, CAS-15) makes a new letter
that `replaces` the previous one; deliveries of the previous one that have not gone yet are
superseded.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.orm import Session

from adapters.problems import GatewayInputError, Kind, Problem
from common import codes
from common.datetimes import to_fhir_instant
from fhir_mapping.letters.document import document_bundle, letter_id_for, letter_version, letter_view, organization, patient_name
from fhir_mapping.letters.pdf import render_pdf
from fhir_mapping.letters.request import UNKNOWN_PRACTICE, LetterRequest, Recipient, parse_letter_request
from fhir_mapping.letters.types import LETTER_TYPE_SYSTEM
from fhir_mapping.provenance import provenance
from gateway.letters.outbox import store
from gateway.letters.outbox.consent import withheld_because
from gateway.letters.outbox.practices import practice_address
from gateway.platform.store.repo import ResourceQuery, get_resource, put_resource, search_resources

__all__ = [
    "request_letter",
    "queue_letter",
    "letter_pdf",
    "letter_document",
    "recipient_kind",
    "use_services",
    "service_contact",
    "ServiceContact",
]

log = structlog.get_logger("iap.letters")


@dataclass(frozen=True)
class ServiceContact:
    """A sending service as its letters show it: name, ODS code, and contact lines (rule file `service`)."""

    name: str
    ods: str
    telephone: str
    lines: list[str]


# service id -> its contact, from the rule files' `service.contact` (issue 34); set by the app at start-up
_SERVICES: dict[str, ServiceContact] = {}


def use_services(*registries: Any) -> None:
    """Letters from these services carry their name and contact details (rule files' `service.contact`)."""
    for registry in registries:
        for service_id, rules in registry.services.items():
            info = rules.service
            lines = [*info.contact.address, f"Telephone: {info.contact.telephone}", f"Email: {info.contact.email}"]
            _SERVICES[service_id] = ServiceContact(info.name, info.provider_ods, info.contact.telephone, lines)


def service_contact(service_id: str | None) -> ServiceContact | None:
    """The contact of a configured service; the shipped rule files when the app set none."""
    if not _SERVICES:
        from gateway.cas.rules.schema import load_rules
        from gateway.pathways.rules.schema import load_pathways  # late: the rules are data the outbox only reads

        use_services(load_rules(), load_pathways())
    return _SERVICES.get(service_id) if service_id else None


def recipient_kind(recipient: Recipient, patient: dict[str, Any]) -> str:
    """gp, referrer or patient.

    gp: the patient's registered practice, V81999 ("not known"), or any organisation when no practice is on
    record (it cannot be told apart from the GP, so the GP-contact wish, TT-14, must apply to it).
    """
    if recipient.patient:
        return "patient"
    practices = {(gp.get("identifier") or {}).get("value") for gp in patient.get("generalPractitioner", []) if isinstance(gp, dict)}
    return "gp" if not practices or recipient.ods in practices or recipient.ods == UNKNOWN_PRACTICE else "referrer"


def _label(session: Session, recipient: Recipient, kind: str, patient: dict[str, Any]) -> str:
    if kind == "patient":
        return f"{patient_name(patient)} (the patient)"
    if kind == "gp" and recipient.ods != UNKNOWN_PRACTICE:
        found = practice_address(session, recipient.ods)  # the GP practice directory (ODS epraccur.csv)
        if found:
            return f"{', '.join([found[0], *found[1]])} ({recipient.ods})"
        log.warning("letter.practice_not_in_directory", ods=recipient.ods)  # addressed by code; load the ODS file
    name = recipient.display or ("GP practice" if kind == "gp" else "Referrer")
    return f"{name} ({recipient.ods})" if recipient.ods != UNKNOWN_PRACTICE else "The patient's GP practice"


def _resolve(session: Session, request: LetterRequest) -> list[dict[str, Any]]:
    """The resources the letter reports (all must exist), plus the contacts their notes and scores belong to."""
    found: dict[str, dict[str, Any]] = {}
    missing = []
    for ref in request.about:
        rtype, rid = ref.split("/", 1)
        resource = get_resource(session, rtype, rid)
        if resource is None:
            missing.append(ref)
        elif _owner(resource) not in (None, f"Patient/{request.patient_id}"):
            raise GatewayInputError(
                Problem(Kind.BUSINESS_RULE, "CommunicationRequest.about", f"{ref} belongs to another patient"), stage="rules"
            )
        else:
            found[ref] = resource
    if missing:
        raise GatewayInputError([Problem(Kind.NOT_FOUND, "CommunicationRequest.about", f"{ref} is not known") for ref in missing])
    for token in request.letter_type.latest_scores:  # e.g. TT-14: the latest PHQ-9 and GAD-7, whatever the request names
        system, _, code = token.partition("|")
        scores, _ = search_resources(
            session, ResourceQuery("Observation", patient=request.patient_id, tokens=[("code", system, code)], count=1000)
        )
        if scores and f"Observation/{scores[-1]['id']}" not in found:
            found[f"Observation/{scores[-1]['id']}"] = scores[-1]
    for resource in list(found.values()):
        contexts = [e.get("reference") for e in (resource.get("context") or {}).get("encounter", [])]
        contexts += [(resource.get("encounter") or {}).get("reference")]
        for ref in contexts:
            if ref and ref.startswith("Encounter/") and ref not in found:
                encounter = get_resource(session, "Encounter", ref.split("/", 1)[1])
                if encounter is not None:
                    found[ref] = encounter
    return list(found.values())


def _compact(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _compact(v) for k, v in node.items()}
        return {k: v for k, v in out.items() if v not in ([], {}, "", None)}
    if isinstance(node, list):
        return [v for v in (_compact(item) for item in node) if v not in ([], {}, "", None)]
    return node


def _owner(resource: dict[str, Any]) -> str | None:
    return (resource.get("subject") or resource.get("for") or resource.get("patient") or {}).get("reference")


def request_letter(session: Session, communication_request: dict[str, Any], now: datetime, service_id: str | None = None) -> dict[str, Any]:
    """Store the request, its letter and its deliveries in the caller's transaction; returns the letter's DocumentReference.

    `service_id`: the service sending it, which owns the letter and its deliveries (gateway.platform.store.visibility).

    Refuses a malformed request with GatewayInputError naming the element (nothing is written).
    """
    communication_request = _compact(communication_request)  # FHIR JSON has no empty elements: `[]`, `{}`, `""` dropped
    request = parse_letter_request(communication_request)
    patient = get_resource(session, "Patient", request.patient_id)
    if patient is None:
        raise GatewayInputError(Problem(Kind.NOT_FOUND, "CommunicationRequest.subject", f"Patient/{request.patient_id} is not known"))
    resources = _resolve(session, request)
    letter_id = letter_id_for(communication_request)
    existing = get_resource(session, "DocumentReference", letter_id)
    if existing is not None:
        return existing  # the same request again: the same letter, already queued
    stored_request, _ = put_resource(session, communication_request, now, service_id)
    previous = _supersede(session, request, letter_id, now)
    configured = service_contact(service_id)
    # the service's Organization is custodian and sender (never the software): the request's, else the service's own
    sender = organization(
        request.sender_ods or (configured.ods if configured else None),
        request.sender_name or (configured.name if configured else None),
        configured.telephone if configured else None,
    )
    kinds = [(r, recipient_kind(r, patient)) for r in request.recipients]
    # the addressee lines name only those it goes to: a GP letter withheld (TT-02, TT-14) is not "To: GP practice"
    withheld = {k: withheld_because(session, request.letter_type, k, request.patient_id) for _, k in kinds}
    sent_to = [(r, k) for r, k in kinds if withheld[k] is None]
    sent_to.sort(key=lambda pair: ("gp", "referrer", "patient").index(pair[1]))  # "To:" the first, "Copy:" the rest
    audience = next((k for k in ("gp", "referrer", "patient") if any(kind == k for _, kind in sent_to)), "gp")
    view = letter_view(
        request,
        letter_id,
        patient,
        resources,
        [(r, _label(session, r, k, patient)) for r, k in sent_to],
        sender["name"],
        now,
        audience=audience,
        contact=configured.lines if configured else None,
        version=letter_version(get_resource(session, "Bundle", previous)) + 1 if previous else 1,  # GPCM-SD-CS-007
        sender_ods=(sender.get("identifier") or [{}])[0].get("value"),
    )
    document = document_bundle(view, request, patient, sender, resources, now, replaces=previous)
    pdf = render_pdf(view, now)
    put_resource(session, document, now, service_id)
    letter, _ = put_resource(session, _letter_reference(request, letter_id, patient, sender, pdf, now, previous), now, service_id)
    for recipient, kind in kinds:
        store.enqueue(
            session,
            delivery_id=store.delivery_id(letter_id, recipient.key),
            letter_id=letter_id,
            letter_type=request.letter_type.code,
            patient_id=request.patient_id,
            recipient_kind=kind,
            recipient=f"Patient/{request.patient_id}" if recipient.patient else str(recipient.ods),
            now=now,
        )
    record = provenance(
        letter,
        "letter-requested",
        request.signed_by or "iap-gateway",
        request.rule_ids,
        f"{request.letter_type.title} queued for {len(kinds)} recipient(s)"
        + (f"; replaces letter {previous}" if previous else "")
        # $explain: why an addressee is left off the letter (the delivery is still checked again at send time)
        + "".join(f"; {kind} not named as an addressee: {why}" for kind, why in withheld.items() if why),
        now,
    )
    record["target"].append({"reference": f"CommunicationRequest/{stored_request['id']}"})
    put_resource(session, record, now, service_id)
    log.info("letter.requested", letter_type=request.letter_type.code, recipients=len(kinds), replaces=bool(previous))
    return letter


def _addressable(recipient: Any, patient_id: str) -> bool:
    if not isinstance(recipient, dict):
        return False
    identifier = recipient.get("identifier") or {}
    return recipient.get("reference") == f"Patient/{patient_id}" or (
        identifier.get("system") == codes.ODS_ORG and bool(identifier.get("value"))
    )


def queue_letter(session: Session, communication_request: dict[str, Any], now: datetime, service_id: str | None = None) -> dict[str, Any]:
    """For the gateway's own rules (pathways): the letter through `request_letter`, with recipients it cannot address
    (a referrer known only by name) noted rather than refused; with none left, the request is kept `on-hold` with the
    reason. Returns the stored CommunicationRequest."""
    subject = str((communication_request.get("subject") or {}).get("reference", "")).removeprefix("Patient/")
    recipients = communication_request.get("recipient") or []
    usable = [r for r in recipients if _addressable(r, subject)]
    skipped = [str(r.get("display") or r.get("reference") or "unnamed") for r in recipients if r not in usable]
    request = dict(communication_request)
    if skipped:
        note = f"Not addressable electronically (no ODS code): {', '.join(skipped)}"
        request["note"] = [*request.get("note", []), {"text": note}]
    if not usable:
        request = {k: v for k, v in request.items() if k != "recipient"} | {
            "status": "on-hold",
            "statusReason": {"text": "No recipient the gateway can address: an organisation's ODS code, or the patient"},
        }
        stored, _ = put_resource(session, request, now, service_id)
        return stored
    request["recipient"] = usable
    request_letter(session, request, now, service_id)
    return get_resource(session, "CommunicationRequest", str(request["id"])) or request


def _supersede(session: Session, request: LetterRequest, letter_id: str, now: datetime) -> str | None:
    """Earlier letters for the same request are replaced: their undelivered rows superseded; the newest id returned."""
    related: list[tuple[str, str | None, str]] = [("related", None, f"CommunicationRequest/{request.id}")]
    earlier, _ = search_resources(session, ResourceQuery("DocumentReference", tokens=related, count=1000))
    current = [d for d in earlier if d["id"] != letter_id and d.get("status") == "current"]
    for document in current:
        replaced = {k: v for k, v in document.items() if k != "meta"} | {"status": "superseded"}
        put_resource(session, replaced, now)
        store.supersede(session, document["id"], letter_id, now)
    newest = max(current, key=lambda d: d.get("date", ""), default=None)
    return newest["id"] if newest else None


def _letter_reference(
    request: LetterRequest,
    letter_id: str,
    patient: dict[str, Any],
    sender: dict[str, Any],
    pdf: bytes,
    now: datetime,
    previous: str | None,
) -> dict[str, Any]:
    letter_type = request.letter_type
    reference: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "id": letter_id,
        "meta": {"profile": [f"{codes.UKCORE}DocumentReference"]},
        "masterIdentifier": {"system": "https://tools.ietf.org/html/rfc4122", "value": letter_id},
        "status": "current",
        "docStatus": "final",
        "type": {"coding": [{"system": LETTER_TYPE_SYSTEM, "code": letter_type.code, "display": letter_type.description}]},
        "subject": {"reference": f"Patient/{patient['id']}"},
        "date": to_fhir_instant(now),
        "author": [{"display": sender["name"]}],
        "description": letter_type.title,
        "content": [
            {
                "attachment": {
                    "contentType": "application/pdf",
                    "data": base64.b64encode(pdf).decode("ascii"),
                    "title": f"{letter_type.title} (PDF)",
                    "creation": to_fhir_instant(now),
                }
            },
            {"attachment": {"contentType": "application/fhir+json", "url": f"Bundle/{letter_id}", "title": "FHIR document"}},
        ],
        # only the request: what the letter reports is named there (notes searched by case must not find letters)
        "context": {"related": [{"reference": f"CommunicationRequest/{request.id}"}]},
    }
    if previous:
        reference["relatesTo"] = [{"code": "replaces", "target": {"reference": f"DocumentReference/{previous}"}}]
    return reference


def letter_pdf(letter: dict[str, Any]) -> bytes:
    """The PDF rendition stored with a letter."""
    data = next(c["attachment"]["data"] for c in letter["content"] if c["attachment"].get("contentType") == "application/pdf")
    return base64.b64decode(data)


def letter_document(session: Session, letter_id: str) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    """(DocumentReference, canonical document Bundle, PDF) of a stored letter."""
    letter = get_resource(session, "DocumentReference", letter_id)
    document = get_resource(session, "Bundle", letter_id)
    if letter is None or document is None:
        raise LookupError(f"letter {letter_id} is not stored")
    return letter, {k: v for k, v in document.items() if k != "meta"}, letter_pdf(letter)
