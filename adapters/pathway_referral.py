"""A referral to a primary care or Talking Therapies pathway: a FHIR ServiceRequest -> `PathwayReferral`.

What is read (docs/formats/pathway-referral.md has the full table):
  identifier[0]            the sender's referral id (system + value): re-sending it never creates a second referral
  performer[0].identifier  the pathway service (system https://fhir.iap-gateway.org/Id/pathway-service)
  authoredOn               when the service received the referral (clocks run from it; needs a UTC offset)
  priority                 routine | urgent | asap | stat (TT-03: an urgent self-referral goes to the duty worker)
  category                 referral source (CodeSystem referral-source): self | gp | health-professional |
                           secondary-care | care-navigator | mhwbtc | mhp (TT-02, PC-06)
  code                     requested step (CodeSystem pathway-step): primary care mhwbtc | mhp | pcmhh
  reasonCode               screening findings (CodeSystem referral-finding), e.g. crisis-response (PC-02, TT-04)
  subject -> contained Patient: NHS number, birthDate, generalPractitioner ODS code (PC-01)
  supportingInfo -> contained QuestionnaireResponse (PHQ-9, GAD-7, DIALOG, ...), or CarePlan/<id> (PC-06 DIALOG+)
  extension gp-contact-agreed      valueBoolean; required on a self-referral (TT-02, TT-14)
  extension letter-copy-to-patient valueBoolean; default true (TT-14 cc the client unless they prefer not)
  extension referral-functioning   valueCode relatively-unaffected | impeded | poor: the referrer's statement (TT-07)
  extension referral-risk          valueCode low | no-current-intent | high: the referrer's statement (TT-07)

No FHIR objects are built and nothing is stored here; every problem names its element.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from adapters.json_shapes import CODEABLE, IDENTIFIERS, REFERENCE, JsonShape, present, under
from adapters.jsonparse import parse_json_object
from adapters.problems import Kind, ProblemList
from adapters.referral import Demographics, check_nhs_number
from common import codes
from common.datetimes import OffsetMissing, parse_source_date, parse_source_datetime

__all__ = ["PathwayReferral", "parse_pathway_referral", "GATEWAY", "SOURCES", "STEPS"]

GATEWAY = codes.GATEWAY_BASE
SERVICE_SYSTEM = f"{GATEWAY}/Id/pathway-service"
SOURCE_SYSTEM = f"{GATEWAY}/CodeSystem/referral-source"
STEP_SYSTEM = f"{GATEWAY}/CodeSystem/pathway-step"
FINDING_SYSTEM = f"{GATEWAY}/CodeSystem/referral-finding"
GP_CONTACT_URL = f"{GATEWAY}/StructureDefinition/gp-contact-agreed"
COPY_URL = f"{GATEWAY}/StructureDefinition/letter-copy-to-patient"
FUNCTIONING_URL = f"{GATEWAY}/StructureDefinition/referral-functioning"
RISK_URL = f"{GATEWAY}/StructureDefinition/referral-risk"
FUNCTIONING = ("relatively-unaffected", "impeded", "poor")  # TT-07 step table's functioning column
RISKS = ("low", "no-current-intent", "high")  # TT-07 step table's risk column
NHS_NUMBER = codes.NHS_NUMBER
ODS = codes.ODS_ORG
SOURCES = ("self", "gp", "health-professional", "secondary-care", "care-navigator", "mhwbtc", "mhp")
STEPS = ("mhwbtc", "mhp", "pcmhh")
PRIORITIES = ("routine", "urgent", "asap", "stat")


@dataclass(frozen=True)
class PathwayReferral:
    system: str
    value: str
    service_id: str
    received: datetime
    priority: str
    source: str
    requested_step: str | None
    findings: tuple[str, ...]
    patient: Demographics
    gp_practice: str | None
    gp_contact_agreed: bool | None
    copy_to_patient: bool
    questionnaire_responses: tuple[dict[str, Any], ...] = ()
    care_plans: tuple[str, ...] = ()  # CarePlan ids named in supportingInfo
    requester: str | None = None
    note: tuple[str, ...] = field(default=())
    functioning: str | None = None  # TT-07: the referral's own statement of functioning (None: not stated)
    risk: str | None = None  # TT-07: the referral's own statement of risk (None: not stated)

    @property
    def birth_date(self) -> date | None:
        return self.patient.birth_date


def parse_pathway_referral(raw: bytes) -> PathwayReferral:
    """Parse and check a ServiceRequest; raises GatewayInputError with every problem found."""
    body = parse_json_object(raw, "ServiceRequest")
    problems = ProblemList()
    if body.get("resourceType") != "ServiceRequest":
        problems.error(Kind.STRUCTURE, "resourceType", "a pathway referral is a FHIR ServiceRequest")
        problems.raise_if_errors("parse")
    _check_shapes(body, problems)
    problems.raise_if_errors("parse")
    system, value = _identifier(body, problems)
    contained = {f"#{r.get('id')}": r for r in body.get("contained") or [] if isinstance(r, dict) and r.get("id")}
    demographics, practice = _patient(body, contained, problems)
    referral = PathwayReferral(
        system=system,
        value=value,
        service_id=_coded_identifier(body, problems),
        received=_received(body, problems) or datetime.min,
        priority=_priority(body, problems),
        source=_code(body.get("category"), "ServiceRequest.category", SOURCE_SYSTEM, SOURCES, problems, required=True) or "",
        requested_step=_code([body["code"]] if "code" in body else None, "ServiceRequest.code", STEP_SYSTEM, STEPS, problems),
        findings=_findings(body, problems),
        patient=demographics,
        gp_practice=practice,
        gp_contact_agreed=_flag(body, GP_CONTACT_URL, problems),
        copy_to_patient=_flag(body, COPY_URL, problems) is not False,
        questionnaire_responses=_responses(body, contained, problems),
        care_plans=_care_plans(body),
        requester=((body.get("requester") or {}).get("display") if isinstance(body.get("requester"), dict) else None),
        note=tuple(n["text"] for n in body.get("note") or [] if isinstance(n, dict) and isinstance(n.get("text"), str)),
        functioning=_stated(body, FUNCTIONING_URL, FUNCTIONING, problems),
        risk=_stated(body, RISK_URL, RISKS, problems),
    )
    if referral.source == "self" and referral.gp_contact_agreed is None:
        problems.error(
            Kind.REQUIRED,
            f"ServiceRequest.extension('{GP_CONTACT_URL}')",
            "a self-referral must record whether the person agrees to the GP being contacted (TT-02)",
        )
    problems.raise_if_errors("parse")
    return referral


# The JSON type of every element this adapter reads (adapters.json_shapes): the ServiceRequest, its contained Patient.
_REFERRAL = JsonShape(
    {
        **IDENTIFIERS,
        "contained": list,
        "contained[]": dict,
        "contained[].id": str,
        "contained[].resourceType": str,
        "subject": dict,
        **under("subject", REFERENCE),
        "performer": list,
        "performer[]": dict,
        "performer[].identifier": dict,
        "performer[].identifier.system": str,
        "performer[].identifier.value": str,
        "authoredOn": str,
        "priority": str,
        "category": list,
        "category[]": dict,
        **under("category[]", CODEABLE),
        "code": dict,
        **under("code", CODEABLE),
        "reasonCode": list,
        "reasonCode[]": dict,
        **under("reasonCode[]", CODEABLE),
        "extension": list,
        "extension[]": dict,
        "extension[].url": str,
        "supportingInfo": list,
        "supportingInfo[]": dict,
        **under("supportingInfo[]", REFERENCE),
        "requester": dict,
        "requester.display": str,
        "note": list,
        "note[]": dict,
        "note[].text": str,
    }
)
_CONTAINED: dict[str, JsonShape] = {
    "Patient": JsonShape(
        {
            **IDENTIFIERS,
            "name": list,
            "name[]": dict,
            "name[].family": str,
            "name[].given": list,
            "name[].given[]": str,
            "birthDate": str,
            "gender": str,
            "generalPractitioner": list,
            "generalPractitioner[]": dict,
            "generalPractitioner[].identifier": dict,
            "generalPractitioner[].identifier.system": str,
            "generalPractitioner[].identifier.value": str,
        }
    ),
}


def _check_shapes(body: dict[str, Any], problems: ProblemList) -> None:
    """Each element read has its JSON type: a wrong one is a 400 naming it, not a crash."""
    _REFERRAL.check(body, "ServiceRequest", problems)
    contained = body.get("contained")
    for index, resource in enumerate(contained if isinstance(contained, list) else []):
        shape = _CONTAINED.get(str(resource.get("resourceType"))) if isinstance(resource, dict) else None
        if shape is not None:
            shape.check(resource, f"ServiceRequest.contained[{index}]", problems)


def _identifier(body: dict[str, Any], problems: ProblemList) -> tuple[str, str]:
    idents = body.get("identifier")
    first = idents[0] if isinstance(idents, list) and idents and isinstance(idents[0], dict) else {}
    system, value = first.get("system"), first.get("value")
    if not isinstance(system, str) or not system or not isinstance(value, str) or not value.strip():
        problems.error(Kind.REQUIRED, "ServiceRequest.identifier[0]", "the sender's referral id (system and value) is required")
        return "", ""
    if len(value) > 128:
        problems.error(Kind.VALUE, "ServiceRequest.identifier[0].value", "referral id longer than 128 characters")
    return system, value.strip()


def _coded_identifier(body: dict[str, Any], problems: ProblemList) -> str:
    for index, performer in enumerate(body.get("performer") or []):
        ident = performer.get("identifier") if isinstance(performer, dict) else None
        if isinstance(ident, dict) and ident.get("system") == SERVICE_SYSTEM and isinstance(ident.get("value"), str):
            return str(ident["value"])
        if index > 8:
            break
    problems.error(
        Kind.REQUIRED, "ServiceRequest.performer", f"name the pathway service as performer.identifier {SERVICE_SYSTEM}|<service id>"
    )
    return ""


def _received(body: dict[str, Any], problems: ProblemList) -> datetime | None:
    value = body.get("authoredOn")
    if not isinstance(value, str):
        problems.error(Kind.REQUIRED, "ServiceRequest.authoredOn", "when the service received the referral is required")
        return None
    try:
        return parse_source_datetime(value)
    except OffsetMissing:
        problems.error(Kind.VALUE, "ServiceRequest.authoredOn", "authoredOn must carry a UTC offset (e.g. +01:00)")
    except ValueError:
        problems.error(Kind.VALUE, "ServiceRequest.authoredOn", "authoredOn is not a FHIR dateTime")
    return None


def _priority(body: dict[str, Any], problems: ProblemList) -> str:
    value = body.get("priority", "routine")
    if value not in PRIORITIES:
        problems.error(Kind.VALUE, "ServiceRequest.priority", f"priority must be one of {list(PRIORITIES)}")
        return "routine"
    return str(value)


def _code(concepts: Any, element: str, system: str, allowed: tuple[str, ...], problems: ProblemList, required: bool = False) -> str | None:
    for concept in concepts if isinstance(concepts, list) else []:
        for coding in (concept or {}).get("coding") or [] if isinstance(concept, dict) else []:
            if isinstance(coding, dict) and coding.get("system") == system:
                if coding.get("code") not in allowed:
                    problems.error(Kind.VALUE, f"{element}.coding.code", f"must be one of {list(allowed)} ({system})")
                    return None
                return str(coding["code"])
    if required:
        problems.error(Kind.REQUIRED, element, f"a coding from {system} is required: one of {list(allowed)}")
    return None


def _findings(body: dict[str, Any], problems: ProblemList) -> tuple[str, ...]:
    out: list[str] = []
    for i, concept in enumerate(body.get("reasonCode") or []):
        for coding in (concept or {}).get("coding") or [] if isinstance(concept, dict) else []:
            if isinstance(coding, dict) and coding.get("system") == FINDING_SYSTEM:
                code = coding.get("code")
                if not isinstance(code, str) or not code:
                    problems.error(Kind.VALUE, f"ServiceRequest.reasonCode[{i}].coding.code", "a finding needs a code")
                elif code not in out:
                    out.append(code)
    return tuple(out)


def _patient(body: dict[str, Any], contained: dict[str, dict[str, Any]], problems: ProblemList) -> tuple[Demographics, str | None]:
    ref = (body.get("subject") or {}).get("reference") if isinstance(body.get("subject"), dict) else None
    patient = contained.get(ref) if isinstance(ref, str) else None
    if patient is None or patient.get("resourceType") != "Patient":
        problems.error(Kind.REQUIRED, "ServiceRequest.subject", "subject must reference a contained Patient (#id)")
        return Demographics(nhs_number=""), None
    element = f"ServiceRequest.contained.where(id='{patient['id']}')"
    ident = next((i for i in patient.get("identifier") or [] if isinstance(i, dict) and i.get("system") == NHS_NUMBER), {})
    nhs, reason = check_nhs_number(ident.get("value"))
    if reason:
        problems.error(Kind.VALUE if ident else Kind.REQUIRED, f"{element}.identifier", reason)
    birth = None
    if not isinstance(patient.get("birthDate"), str):
        problems.error(Kind.REQUIRED, f"{element}.birthDate", "date of birth is required (age rules PC-01, TT-01)")
    else:
        try:
            birth = parse_source_date(patient["birthDate"])
        except ValueError:
            problems.error(Kind.VALUE, f"{element}.birthDate", "birthDate is not a FHIR date (YYYY-MM-DD)")
    name = (patient.get("name") or [{}])[0] if isinstance(patient.get("name"), list) else {}
    practice = next(  # an ODS identifier without a value names no practice (PC-01 then refuses a primary care referral)
        (
            g["identifier"]["value"]
            for g in patient.get("generalPractitioner") or []
            if isinstance(g, dict)
            and isinstance(g.get("identifier"), dict)
            and g["identifier"].get("system") == ODS
            and g["identifier"].get("value")
        ),
        None,
    )
    demographics = Demographics(
        nhs_number=nhs or "",
        family=name.get("family") if isinstance(name, dict) else None,
        given=present(name.get("given")) if isinstance(name, dict) else (),
        birth_date=birth,
        gender=patient.get("gender") if patient.get("gender") in ("male", "female", "other", "unknown") else None,
    )
    return demographics, practice


def _flag(body: dict[str, Any], url: str, problems: ProblemList) -> bool | None:
    for ext in body.get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == url:
            if not isinstance(ext.get("valueBoolean"), bool):
                problems.error(Kind.VALUE, f"ServiceRequest.extension('{url}')", "must be valueBoolean")
                return None
            return bool(ext["valueBoolean"])
    return None


def _stated(body: dict[str, Any], url: str, allowed: tuple[str, ...], problems: ProblemList) -> str | None:
    """A coded statement the referral makes about itself (TT-07 functioning, risk): one of `allowed`, or None."""
    for ext in body.get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == url:
            if ext.get("valueCode") not in allowed:
                problems.error(Kind.VALUE, f"ServiceRequest.extension('{url}')", f"must be valueCode, one of {list(allowed)}")
                return None
            return str(ext["valueCode"])
    return None


def _responses(body: dict[str, Any], contained: dict[str, dict[str, Any]], problems: ProblemList) -> tuple[dict[str, Any], ...]:
    out = []
    for i, info in enumerate(body.get("supportingInfo") or []):
        ref = info.get("reference") if isinstance(info, dict) else None
        if isinstance(ref, str) and ref.startswith("#"):
            resource = contained.get(ref)
            if resource is None or resource.get("resourceType") != "QuestionnaireResponse":
                problems.error(Kind.VALUE, f"ServiceRequest.supportingInfo[{i}]", "a contained reference must name a QuestionnaireResponse")
            else:
                out.append(resource)
    return tuple(out)


def _care_plans(body: dict[str, Any]) -> tuple[str, ...]:
    refs = (i.get("reference") for i in body.get("supportingInfo") or [] if isinstance(i, dict))
    return tuple(r.removeprefix("CarePlan/") for r in refs if isinstance(r, str) and r.startswith("CarePlan/"))
