"""What a letter's reader sees: each section worked out once as a `SectionView` (paragraphs, an optional table,
entry references) and the whole letter as a `LetterView`.

The same view renders the Composition's section narratives (`document.py`) and the PDF (`pdf.py`), so the two cannot
disagree. Written for its reader (issue 34): NHS number 3-3-4, dates written out, no rule ids or traces.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

from common import codes
from common.datetimes import LONDON, parse_source_datetime
from fhir_mapping.letters.request import LetterRequest, Recipient
from fhir_mapping.letters.types import TEMPLATES_DIR

__all__ = [
    "LetterView",
    "SectionView",
    "SECTIONS",
    "PRSB_MANDATORY",
    "letter_view",
    "long_date",
    "nhs_number",
    "nhs_number_for_reading",
    "patient_name",
    "plain_text",
    "templates",
]

UKCORE_HEADINGS = "https://fhir.hl7.org.uk/CodeSystem/UKCore-RecordStandardHeadings"
RULE_SYSTEM = f"{codes.GATEWAY_BASE}/CodeSystem/domain-rule"
CONSULTATION_OUTCOME = ("plan", "follow-up", "safety-advice")  # Task.input codes (gateway/cas/rules/ops.py)
# rule ids and their traces belong in $explain, never in a letter (issue 34): "(TT-14)", "TT-10: ", "(PC-13, PC-14)"
_RULE_IN_BRACKETS = re.compile(r"\s*\((?:(?:CAS|PC|TT)-\d{2}(?:,\s*)?)+\)")
_RULE_PREFIX = re.compile(r"\b(?:CAS|PC|TT)-\d{2}(?:,\s*(?:CAS|PC|TT)-\d{2})*:\s*")
# sections PRSB marks mandatory (the MH discharge's clinical summary, nhs-standards §4.2): shown as "None recorded" when empty
PRSB_MANDATORY = ("reason-for-contact", "assessment")

# (code, title, national heading coding or None): nhs-standards.md §3 (UK Core headings) and §4.2 (PRSB SNOMED codes)
SECTIONS: tuple[tuple[str, str, dict[str, str] | None], ...] = (
    ("reason-for-contact", "Reason for contact", {"system": UKCORE_HEADINGS, "code": "presenting-complaints-or-issues"}),
    ("assessment", "Assessment", {"system": UKCORE_HEADINGS, "code": "clinical-narrative"}),
    ("outcome-measures", "Outcome measures", {"system": codes.SNOMED, "code": "887141000000103", "display": "Assessment scales"}),
    ("plan", "Plan", {"system": UKCORE_HEADINGS, "code": "plan-and-requested-actions"}),
    ("safety-risk", "Safety and risk", {"system": codes.SNOMED, "code": "886931000000107", "display": "Safety alerts"}),
    ("follow-up", "Follow-up", None),
)


@dataclass
class SectionView:
    code: str
    title: str
    paragraphs: list[str] = field(default_factory=list)
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    entries: list[str] = field(default_factory=list)  # "Type/id" of the resources it reports
    mandatory: bool = False  # PRSB-mandatory: said "None recorded" when empty; any other empty heading is left out

    @property
    def empty(self) -> bool:
        return not (self.paragraphs or self.rows)


@dataclass
class LetterView:
    """Everything a reader sees: used for the section narratives, the Composition text and the PDF."""

    letter_id: str
    title: str
    letter_type: str
    date: str  # London local, e.g. 23 November 2026
    patient_name: str
    nhs_number: str  # as people read it: 999 000 0018
    birth_date: str  # 12 April 1988
    sender: str
    recipients: list[str]  # the addressees the letter is actually sent to (a withheld GP letter is not named)
    signed_by: str
    lines: list[str]
    sections: list[SectionView]
    version: int = 1  # GPCM-SD-CS-006/007: 1 the original, a replacement one more
    sender_ods: str = ""
    composition_title: str = ""  # GPCM-SD-118: "Consultation report" (the TT progress letter "Progress update")
    audience: str = "gp"  # who reads it first: gp, referrer or patient (the wording of the type's template)
    contact: list[str] = field(default_factory=list)  # the service's address, telephone and email (head and footer)


def templates() -> Environment:
    return Environment(
        loader=FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )


def patient_name(patient: dict[str, Any]) -> str:
    name: dict[str, Any] = next(iter(patient.get("name") or []), {})
    parts = [*name.get("prefix", []), *name.get("given", []), name.get("family", "")]
    return " ".join(p for p in parts if p) or "(name not recorded)"


def nhs_number(patient: dict[str, Any]) -> str:
    return next((i["value"] for i in patient.get("identifier", []) if i.get("system") == codes.NHS_NUMBER), "")


def nhs_number_for_reading(value: str) -> str:
    """9990000018 -> 999 000 0018 (the 3-3-4 grouping NHS letters use); anything else as it is."""
    digits = value.replace(" ", "")
    return f"{digits[:3]} {digits[3:6]} {digits[6:]}" if len(digits) == 10 and digits.isdigit() else value


def long_date(value: str | None) -> str:
    """A FHIR date as a GP reads it: 1988-04-12 -> 12 April 1988 (1988-04 -> April 1988); a dateTime in London time."""
    if not value:
        return ""
    if "T" in value:
        moment = parse_source_datetime(value).astimezone(LONDON)
        return f"{moment.day} {moment:%B %Y}, {moment:%H:%M}"
    parts = value.split("-")
    try:
        if len(parts) == 3:
            day = datetime(int(parts[0]), int(parts[1]), int(parts[2]))
            return f"{day.day} {day:%B %Y}"
        if len(parts) == 2:
            return f"{datetime(int(parts[0]), int(parts[1]), 1):%B %Y}"
    except ValueError:
        return value
    return value


def plain_text(text: str) -> str:
    """A line for a letter's reader: rule ids and rule traces taken out (they belong in $explain)."""
    return _RULE_PREFIX.sub("", _RULE_IN_BRACKETS.sub("", text)).strip()


def _when(value: str | None) -> str:
    return long_date(value)


def _text(concept: dict[str, Any] | None) -> str:
    if not concept:
        return ""
    codings = concept.get("coding") or []
    if codings and all(c.get("system") == RULE_SYSTEM for c in codings):
        return ""  # a rule trace (the rules that decided and why): $explain's, not the letter's
    coding: dict[str, Any] = next(iter(codings), {})
    return str(concept.get("text") or coding.get("display") or coding.get("code") or "")


def _attachment_text(document: dict[str, Any]) -> str:
    for content in document.get("content", []):
        attachment = content.get("attachment", {})
        if str(attachment.get("contentType", "")).startswith("text/plain") and attachment.get("data"):
            return base64.b64decode(attachment["data"]).decode("utf-8", errors="replace").strip()
    return ""


def _score(observation: dict[str, Any]) -> str:
    quantity = observation.get("valueQuantity")
    if quantity is not None:
        value = quantity.get("value")
        return f"{value:g}" if isinstance(value, int | float) else str(value)
    for key in ("valueInteger", "valueString", "valueBoolean"):
        if key in observation:
            return str(observation[key])
    return _text(observation.get("valueCodeableConcept"))


def _consultation_outcome(task: dict[str, Any]) -> dict[str, str]:
    """The plan, follow-up and safety advice the operation ending the consultation recorded (Task inputs, CAS-13)."""
    out = {}
    for item in task.get("input", []):
        coding = ((item.get("type") or {}).get("coding") or [{}])[0]
        if coding.get("system") == codes.CAS_TASK_INPUT and coding.get("code") in CONSULTATION_OUTCOME and item.get("valueString"):
            out[str(coding["code"])] = str(item["valueString"])
    return out


def _sections(resources: list[dict[str, Any]], lines: list[str]) -> list[SectionView]:
    views = {code: SectionView(code, title) for code, title, _ in SECTIONS}
    by_type: dict[str, list[dict[str, Any]]] = {}
    for resource in resources:
        by_type.setdefault(resource["resourceType"], []).append(resource)
    reason, assessment, measures = views["reason-for-contact"], views["assessment"], views["outcome-measures"]
    plan, risk, follow = views["plan"], views["safety-risk"], views["follow-up"]
    for request in by_type.get("ServiceRequest", []):
        # a note someone wrote is the referrer's; an unsigned one is the gateway's own routing trace ($explain's, not the letter's)
        signed = [n.get("text", "") for n in request.get("note", []) if n.get("authorString") or n.get("authorReference")]
        said = "; ".join(t for t in [_text(c) for c in request.get("reasonCode", [])] + signed if t)
        reason.paragraphs.append(
            f"Referral of {_when(request.get('authoredOn'))}: {said or _text(request.get('code')) or 'no reason recorded'}"
        )
        reason.entries.append(f"ServiceRequest/{request['id']}")
    for episode in by_type.get("EpisodeOfCare", []):
        period = episode.get("period", {})
        kinds = ", ".join(_text(t) for t in episode.get("type", []) if _text(t)) or "episode of care"
        reason.paragraphs.append(
            f"{kinds}: from {_when(period.get('start'))}" + (f" to {_when(period['end'])}" if period.get("end") else "")
        )
        reason.entries.append(f"EpisodeOfCare/{episode['id']}")
    for task in by_type.get("Task", []):
        if task.get("description"):
            reason.paragraphs.append(str(task["description"]))
        classification = _text(task.get("businessStatus"))
        if classification in ("Urgent CN Review", "Urgent Follow Up"):
            risk.paragraphs.append(f"Case classified {classification} during assessment.")
        notes = [n.get("text", "") for n in task.get("note", []) if n.get("text")]
        status = f"Case {task.get('status')}" + (f": {notes[-1]}" if notes else "")
        concluded = _consultation_outcome(task)  # CAS-13: what the consultation's end recorded, each under its heading
        for view, code in ((plan, "plan"), (risk, "safety-advice"), (follow, "follow-up")):
            if concluded.get(code):
                view.paragraphs.append(concluded[code])
                view.entries.append(f"Task/{task['id']}")
        follow.paragraphs.append(status)
        reason.entries.append(f"Task/{task['id']}")
    for encounter in sorted(by_type.get("Encounter", []), key=lambda e: (e.get("period") or {}).get("start") or ""):
        who = ", ".join(p.get("individual", {}).get("display", "") for p in encounter.get("participant", []) if p.get("individual"))
        kinds = ", ".join(_text(t) for t in encounter.get("type", []) if _text(t)) or "Contact"
        assessment.paragraphs.append(
            f"{_when((encounter.get('period') or {}).get('start'))}: {kinds} ({encounter.get('status')})" + (f", with {who}" if who else "")
        )
        assessment.entries.append(f"Encounter/{encounter['id']}")
    for document in by_type.get("DocumentReference", []):
        title = _text(document.get("type")) or document.get("description") or "Notes"
        author = ", ".join(a.get("display", "") for a in document.get("author", []) if a.get("display"))
        header = f"{title} ({_when(document.get('date'))}" + (f", {author})" if author else ")")
        text = _attachment_text(document)
        assessment.paragraphs.append(f"{header}: {text}" if text else header)
        assessment.entries.append(f"DocumentReference/{document['id']}")
    observations = sorted(by_type.get("Observation", []), key=lambda o: (o.get("effectiveDateTime") or "", _text(o.get("code"))))
    if observations:
        measures.headers = ["Measure", "Date", "Score", "Band"]
    for observation in observations:
        band = "; ".join(_text(i) for i in observation.get("interpretation", []) if _text(i))
        measures.rows.append([_text(observation.get("code")), _when(observation.get("effectiveDateTime")), _score(observation), band])
        measures.entries.append(f"Observation/{observation['id']}")
    for response in by_type.get("QuestionnaireResponse", []):
        measures.paragraphs.append(f"Questionnaire completed {_when(response.get('authored'))} ({response.get('status')})")
        measures.entries.append(f"QuestionnaireResponse/{response['id']}")
    for care_plan in by_type.get("CarePlan", []):
        said = care_plan.get("title") or care_plan.get("description") or "Care plan"
        activities = [
            (a.get("detail") or {}).get("description") or _text((a.get("detail") or {}).get("code")) for a in care_plan.get("activity", [])
        ]
        plan.paragraphs.append(
            f"{said} ({care_plan.get('status')})" + (": " + "; ".join(a for a in activities if a) if any(activities) else "")
        )
        plan.entries.append(f"CarePlan/{care_plan['id']}")
    plan.paragraphs.extend(lines)
    for flag in by_type.get("Flag", []):
        risk.paragraphs.append(f"{_text(flag.get('code'))} ({flag.get('status')})")
        risk.entries.append(f"Flag/{flag['id']}")
    for view in views.values():
        view.paragraphs = [p for p in (plain_text(p) for p in view.paragraphs) if p]
        view.rows = [[plain_text(cell) for cell in row] for row in view.rows]
    return [views[code] for code, _, _ in SECTIONS]


def letter_view(
    request: LetterRequest,
    letter_id: str,
    patient: dict[str, Any],
    resources: list[dict[str, Any]],
    recipients: list[tuple[Recipient, str]],
    sender_name: str,
    now: datetime,
    audience: str = "gp",
    contact: list[str] | None = None,
    version: int = 1,
    sender_ods: str | None = None,
) -> LetterView:
    """What the reader sees. `recipients`: (recipient, addressee line) of those the letter is actually sent to."""
    sections = _sections(resources, [plain_text(line) for line in request.lines])
    if request.letter_type.itk == "mh-edischarge":
        for section in sections:
            section.mandatory = section.code in PRSB_MANDATORY
    day = now.astimezone(LONDON)
    return LetterView(
        letter_id=letter_id,
        title=request.letter_type.title,
        letter_type=request.letter_type.code,
        date=f"{day.day} {day:%B %Y}",
        patient_name=patient_name(patient),
        nhs_number=nhs_number_for_reading(nhs_number(patient)),
        birth_date=long_date(patient.get("birthDate")) or "not recorded",
        sender=sender_name,
        recipients=[label for _, label in recipients],
        signed_by=request.signed_by or sender_name,
        lines=[plain_text(line) for line in request.lines],
        sections=sections,
        audience=audience,
        contact=list(contact or []),
        version=version,
        sender_ods=sender_ods or "",
        composition_title=request.letter_type.composition_title or request.letter_type.title,
    )
