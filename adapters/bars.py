"""BaRS (NHS England Booking and Referral Standard) referral message Bundle -> `Referral`.

Reads the message as the sender wrote it (JSON, not FHIR models), checks the parts
the CAS queue needs and reports every problem with its FHIRPath location. Defects
that do not stop us understanding the referral (a reference without ``urn:uuid:``,
a non-UUID urn that resolves to nothing) are warnings in the reply, never a crash and
never silently ignored. Facts and sources: shared/research/nhs-standards.md §1-2.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from adapters.bars_message import GUID_RE, SHAPES, Entry, Message
from adapters.json_shapes import present
from adapters.jsonparse import parse_json_object
from adapters.problems import GatewayInputError, Kind, Problem, ProblemList
from adapters.referral import (
    Channel,
    Demographics,
    PathwaysOutcome,
    Referral,
    RiskFlag,
    check_nhs_number,
    normalise_dx,
)
from common.datetimes import OffsetMissing, parse_source_date, parse_source_datetime

__all__ = ["parse_bars_message", "BARS_BUNDLE_SYSTEM", "EVENT_SYSTEMS", "DX_SYSTEMS"]

BARS_BUNDLE_SYSTEM = "https://fhir.iap-gateway.org/Id/bars-bundle-id"
NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
# IG system, plus the drifted one in NHS England's own response examples (nhs-standards.md §1.7)
EVENT_SYSTEMS = (
    "https://fhir.nhs.uk/CodeSystem/message-events-bars",
    "https://fhir.nhs.uk/CodeSystem/message-event-servicerequest",
)
DX_SYSTEMS = ("https://fhir.nhs.uk/CodeSystem/pathways-dx-codes", "https://fhir.nhs.uk/Id/pathways-dx-code")
SG_SYSTEMS = ("https://fhir.nhs.uk/CodeSystem/pathways-sg-codes", "https://fhir.nhs.uk/Id/pathways-sg-code")
SD_SYSTEMS = ("https://fhir.nhs.uk/CodeSystem/pathways-sd-codes", "https://fhir.nhs.uk/Id/pathways-sd-code")
PW_SYSTEMS = (
    "https://fhir.nhs.uk/CodeSystem/pathways-pathway-codes",
    "https://fhir.nhs.uk/Id/pathways-template",
)
_DOS_ENDPOINT_RE = re.compile(r"^https?://fhir\.nhs\.uk/Id/dos-service-id\|(?P<id>[A-Za-z0-9]+)$")
_FHIR_ID_RE = re.compile(r"[A-Za-z0-9\-.]{1,64}\Z")
_HANDLED = {"MessageHeader", "ServiceRequest", "Patient", "Encounter", "CarePlan", "Flag", "Organization", "HealthcareService"}


def parse_bars_message(raw: bytes, request_id: str | None, correlation_id: str | None) -> Referral:
    """Parse a BaRS `servicerequest-request` message. Raises GatewayInputError listing every problem."""
    problems = ProblemList()
    for name, value in (("X-Request-Id", request_id), ("X-Correlation-Id", correlation_id)):
        if not value:
            problems.error(Kind.INVALID, f"header:{name}", f"the {name} header is required (BaRS transaction integrity)")
        elif not GUID_RE.match(value):
            problems.error(Kind.INVALID, f"header:{name}", f"the {name} header must be a GUID")
    problems.raise_if_errors("parse")

    bundle = parse_json_object(raw, "Bundle")
    if bundle.get("resourceType") != "Bundle":
        raise GatewayInputError(
            Problem(Kind.STRUCTURE, "resourceType", f"expected a Bundle of type message, got {str(bundle.get('resourceType'))[:40]!r}")
        )
    if bundle.get("type") != "message":
        problems.error(
            Kind.INVALID, "Bundle.type", f"$process-message takes a Bundle of type 'message', got {str(bundle.get('type'))[:20]!r}"
        )
    bundle_id = bundle.get("id")
    if not isinstance(bundle_id, str) or not bundle_id:
        problems.error(Kind.REQUIRED, "Bundle.id", "the sender's Bundle.id is required (kept across updates of this referral)")
    elif _FHIR_ID_RE.match(bundle_id) is None:  # the reply's MessageHeader.response.identifier echoes it: an id
        problems.error(Kind.VALUE, "Bundle.id", "Bundle.id must be a FHIR id: 1 to 64 of A-Z a-z 0-9 - .")
    msg = Message(bundle, problems)
    for item in msg.entries:  # each element read has its JSON type: a wrong one is a 400 by its path, not a crash
        if shape := SHAPES.get(item.resource["resourceType"]):
            shape.check(item.resource, item.path, problems)
    problems.raise_if_errors("parse")

    header = msg.entries[0]
    if header.resource["resourceType"] != "MessageHeader":
        raise GatewayInputError(
            Problem(Kind.INVARIANT, "Bundle.entry[0].resource", "the first entry of a message Bundle must be its MessageHeader (bdl-12)")
        )
    hdr = header.resource
    event = hdr.get("eventCoding") or {}
    if (event.get("system"), event.get("code")) not in {(s, "servicerequest-request") for s in EVENT_SYSTEMS}:
        problems.error(
            Kind.NOT_SUPPORTED,
            f"{header.path}.eventCoding",
            f"event {event.get('system')}#{event.get('code')} is not supported; this endpoint takes "
            "https://fhir.nhs.uk/CodeSystem/message-events-bars#servicerequest-request",
        )
    reason = _first_code(hdr.get("reason"))
    if reason not in (None, "new"):
        problems.error(Kind.NOT_SUPPORTED, f"{header.path}.reason", f"message reason {reason!r} is not supported yet (only 'new')")
    destination = _destination(hdr, header.path, problems)
    focus = hdr.get("focus") if isinstance(hdr.get("focus"), list) else []
    sr_entry = msg.resolve(focus[0] if focus else None, f"{header.path}.focus[0]", "ServiceRequest", required=True)
    msg.check_all_references(raw)
    problems.raise_if_errors("parse")
    assert sr_entry is not None and destination is not None

    sr = sr_entry.resource
    if sr.get("status") != "active":
        problems.error(
            Kind.NOT_SUPPORTED,
            f"{sr_entry.path}.status",
            f"ServiceRequest.status {sr.get('status')!r}: only new active referrals are supported",
        )
    patient_entry = msg.resolve(sr.get("subject"), f"{sr_entry.path}.subject", "Patient", required=True)
    encounter_entry = msg.resolve(sr.get("encounter"), f"{sr_entry.path}.encounter", "Encounter", required=False)
    based_on = sr.get("basedOn") if isinstance(sr.get("basedOn"), list) else []
    careplan_entry = msg.resolve(based_on[0], f"{sr_entry.path}.basedOn[0]", "CarePlan", required=False) if based_on else None
    if careplan_entry is None and msg.of_type("CarePlan"):
        careplan_entry = msg.of_type("CarePlan")[0]

    patient = _patient(patient_entry, msg, problems) if patient_entry else None
    pathways = _pathways(careplan_entry, sr_entry, problems)
    deadline = _datetime_at(sr, "occurrencePeriod.end", sr_entry.path, problems)
    call_time = None
    for entry, path in (
        (careplan_entry, "period.start"),
        (encounter_entry, "period.start"),
        (sr_entry, "authoredOn"),
        (sr_entry, "occurrencePeriod.start"),
    ):
        if entry is not None:
            found = _datetime_at(entry.resource, path, entry.path, problems)
            call_time = call_time or found
    if call_time is None and not problems.has_errors:
        problems.error(
            Kind.REQUIRED,
            f"{sr_entry.path}.authoredOn",
            "no time for the assessment: send CarePlan.period.start, Encounter.period.start or ServiceRequest.authoredOn",
        )
    if pathways.dx is None and not pathways.dx_element:
        problems.error(
            Kind.REQUIRED,
            f"{careplan_entry.path}.activity.outcomeCodeableConcept" if careplan_entry else f"{sr_entry.path}.reasonCode",
            "no NHS Pathways disposition (Dx) code: send it in CarePlan.activity.outcomeCodeableConcept "
            "(https://fhir.nhs.uk/CodeSystem/pathways-dx-codes) (CAS-05)",
        )
    if patient is None or call_time is None:
        problems.raise_if_errors("parse")
    assert patient is not None and patient_entry is not None and call_time is not None and isinstance(bundle_id, str)

    header_id = hdr.get("id") or (header.full_url[9:] if header.full_url and header.full_url.startswith("urn:uuid:") else None)
    source: dict[str, Any] = hdr["source"] if isinstance(hdr.get("source"), dict) else {}
    used = {e.index for e in (header, sr_entry, patient_entry, encounter_entry, careplan_entry) if e is not None}
    used |= {e.index for e in msg.of_type("Flag")}
    unused = tuple(
        f"Bundle.entry[{e.index}] ({e.resource['resourceType']})"
        for e in msg.entries
        if e.index not in used and e.resource["resourceType"] not in _HANDLED
    )
    return Referral(
        source="bars",
        source_system=BARS_BUNDLE_SYSTEM,
        source_id=bundle_id,
        message_id=request_id or "",
        channel=Channel.BARS,
        destination=destination,
        destination_element=f"{header.path}.destination[0].endpoint",
        call_time=call_time,
        patient=patient,
        gp_practice_ods=_gp_ods(patient_entry, msg),
        pathways=pathways,
        risk_flags=tuple(_flags(msg)),
        callback_deadline=deadline,
        correlation_id=correlation_id,
        header_id=header_id,
        reply_to=source.get("endpoint") if isinstance(source.get("endpoint"), str) else None,
        problems=tuple(problems.items),
        unused=unused,
    )


def _destination(hdr: dict[str, Any], path: str, problems: ProblemList) -> str | None:
    """The receiving DoS service id from MessageHeader.destination[0].endpoint ('<dos-service-id system>|<id>')."""
    destinations = hdr.get("destination") if isinstance(hdr.get("destination"), list) else []
    endpoint = destinations[0].get("endpoint") if destinations and isinstance(destinations[0], dict) else None
    element = f"{path}.destination[0].endpoint"
    if not isinstance(endpoint, str) or not endpoint:
        problems.error(
            Kind.REQUIRED,
            element,
            "the destination endpoint is required: 'https://fhir.nhs.uk/Id/dos-service-id|<id>' of the receiving service",
        )
        return None
    match = _DOS_ENDPOINT_RE.match(endpoint)
    if not match:
        problems.error(Kind.VALUE, element, f"{endpoint[:80]!r} is not 'https://fhir.nhs.uk/Id/dos-service-id|<id>'")
        return None
    return match.group("id")


def _patient(entry: Entry, msg: Message, problems: ProblemList) -> Demographics | None:
    res = entry.resource
    identifiers = _as_list(res.get("identifier"))
    index = next((i for i, ident in enumerate(identifiers) if isinstance(ident, dict) and ident.get("system") == NHS_NUMBER_SYSTEM), None)
    if index is None:
        problems.error(Kind.REQUIRED, f"{entry.path}.identifier", f"the patient's NHS number ({NHS_NUMBER_SYSTEM}) is required")
        return None
    raw_nhs = identifiers[index].get("value")
    nhs, reason = check_nhs_number(raw_nhs)
    if reason:
        problems.error(Kind.VALUE, f"{entry.path}.identifier[{index}].value", reason)
    names = _as_list(res.get("name"))
    name = next((n for n in names if isinstance(n, dict) and n.get("use") == "official"), names[0] if names else {})
    birth_date = None
    if isinstance(res.get("birthDate"), str):
        try:
            birth_date = parse_source_date(res["birthDate"])
        except ValueError as exc:
            problems.error(Kind.VALUE, f"{entry.path}.birthDate", str(exc))
    addresses = _as_list(res.get("address"))
    address = addresses[0] if addresses and isinstance(addresses[0], dict) else {}
    telecoms = _as_list(res.get("telecom"))
    phone = next((t.get("value") for t in telecoms if isinstance(t, dict) and t.get("system") == "phone"), None)
    gender = res.get("gender") if res.get("gender") in ("male", "female", "other", "unknown") else None
    return Demographics(
        nhs_number=nhs or str(raw_nhs or ""),
        family=name.get("family"),
        given=present(name.get("given")),
        prefix=present(name.get("prefix")),
        birth_date=birth_date,
        gender=gender,
        address_lines=present(address.get("line")),
        city=address.get("city"),
        postcode=address.get("postalCode"),
        phone=phone,
    )


def _gp_ods(entry: Entry, msg: Message) -> str | None:
    """The registered GP practice's ODS code, from Patient.generalPractitioner (identifier or resolved Organization)."""
    for index, ref in enumerate(entry.resource.get("generalPractitioner") or []):
        if not isinstance(ref, dict):
            continue
        ident = ref.get("identifier")
        if isinstance(ident, dict) and ident.get("system") == ODS_SYSTEM and ident.get("value"):
            return str(ident["value"])
        org = (
            msg.resolve(ref, f"{entry.path}.generalPractitioner[{index}]", "Organization", required=False) if ref.get("reference") else None
        )
        for org_ident in (org.resource.get("identifier") or []) if org else []:
            if isinstance(org_ident, dict) and org_ident.get("system") == ODS_SYSTEM and org_ident.get("value"):
                return str(org_ident["value"])
    return None


def _pathways(careplan: Entry | None, sr: Entry, problems: ProblemList) -> PathwaysOutcome:
    """Pathways SG/SD/Dx codes: CarePlan.activity.outcomeCodeableConcept (BaRS APP1), else ServiceRequest.reasonCode (older senders)."""
    found: dict[str, tuple[str, str | None, str]] = {}
    summary = None
    places: list[tuple[str, list[Any]]] = []
    if careplan is not None:
        for a_index, activity in enumerate(careplan.resource.get("activity") or []):
            if isinstance(activity, dict):
                places.append((f"{careplan.path}.activity[{a_index}].outcomeCodeableConcept", activity.get("outcomeCodeableConcept") or []))
    places.append((f"{sr.path}.reasonCode", sr.resource.get("reasonCode") or []))
    for base, concepts in places:
        for c_index, concept in enumerate(concepts if isinstance(concepts, list) else []):
            if not isinstance(concept, dict):
                continue
            codings = concept.get("coding") or []
            if not codings and isinstance(concept.get("text"), str) and base.endswith("outcomeCodeableConcept"):
                summary = summary or concept["text"]
            for g_index, coding in enumerate(codings if isinstance(codings, list) else []):
                if not isinstance(coding, dict) or not isinstance(coding.get("code"), str):
                    continue
                element = f"{base}[{c_index}].coding[{g_index}].code"
                for key, systems in (("dx", DX_SYSTEMS), ("sg", SG_SYSTEMS), ("sd", SD_SYSTEMS), ("pw", PW_SYSTEMS)):
                    if coding.get("system") in systems and key not in found:
                        found[key] = (coding["code"], coding.get("display"), element)
    dx = None
    if "dx" in found:
        dx = normalise_dx(found["dx"][0])
        if dx is None:
            problems.error(Kind.VALUE, found["dx"][2], f"{found['dx'][0]!r} is not an NHS Pathways Dx code (Dx + digits)")
    return PathwaysOutcome(
        dx=dx,
        dx_display=found["dx"][1] if "dx" in found else None,
        dx_element=found["dx"][2] if "dx" in found else "",
        symptom_group=found["sg"][0] if "sg" in found else None,
        symptom_discriminator=found["sd"][0] if "sd" in found else None,
        pathway=found["pw"][0] if "pw" in found else None,
        summary=summary,
    )


def _flags(msg: Message) -> Iterator[RiskFlag]:
    for entry in msg.of_type("Flag"):
        res = entry.resource
        if res.get("status") not in (None, "active"):
            continue
        category = next(iter(_codings(res.get("category"))), {})
        code = next(iter(_codings([res.get("code")])), {})
        yield RiskFlag(
            category_system=category.get("system"),
            category_code=category.get("code"),
            code_system=code.get("system"),
            code=code.get("code"),
            display=code.get("display") or category.get("display"),
            element=entry.path,
        )


def _codings(concepts: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for concept in concepts if isinstance(concepts, list) else []:
        if isinstance(concept, dict):
            out += [c for c in concept.get("coding") or [] if isinstance(c, dict)]
    return out


def _first_code(concept: Any) -> str | None:
    codings = _codings([concept])
    return codings[0].get("code") if codings else None


def _datetime_at(resource: dict[str, Any], dotted: str, base: str, problems: ProblemList) -> datetime | None:
    value: Any = resource
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return None
    try:
        return parse_source_datetime(value)
    except OffsetMissing as exc:
        problems.error(Kind.VALUE, f"{base}.{dotted}", f"dates must carry a timezone: {exc}")
    except ValueError as exc:
        problems.error(Kind.VALUE, f"{base}.{dotted}", str(exc))
    return None


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
