"""Check a QuestionnaireResponse against its Questionnaire, then score it from the measure's data.

Takes: a QuestionnaireResponse as FHIR JSON and the `MeasureCatalogue`.
Returns: the measure, each score (value, band, how many items it used, why it was not
computed or was prorated) and the risk items answered at or over their threshold.
Follows each instrument's missing-item rule from its scoring file; never imputes a
risk item. Inbound forms vary (questionnaires.md §1): LHC-Forms linkIds (`/44250-9`)
are read as bare LOINC codes, and answers are looked up in our own tables, never in
the client's ordinalValue extensions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from adapters.problems import GatewayInputError, Kind, Problem
from fhir_mapping.fhir import QuestionnaireResponse, to_json_dict
from fhir_mapping.measures import Band, Measure, MeasureCatalogue, ScaleEntry, ScoreSpec

__all__ = ["Score", "RiskHit", "ScoredResponse", "check_response", "score_answers", "item_path"]

_VALUE_KEYS = {
    "choice": ("valueCoding", "valueInteger", "valueString"),
    "open-choice": ("valueCoding", "valueString"),
    "boolean": ("valueBoolean",),
    "integer": ("valueInteger",),
    "decimal": ("valueDecimal",),
    "string": ("valueString",),
    "text": ("valueString",),
    "date": ("valueDate",),
    "dateTime": ("valueDateTime",),
}


@dataclass(frozen=True)
class Score:
    spec: ScoreSpec
    value: float | None
    band: Band | None
    used: int  # items that contributed
    expected: int  # items the score is made of (less any answered "not applicable")
    note: str | None = None  # why no value, or how it was derived (prorated, mean of n)


@dataclass(frozen=True)
class RiskHit:
    link_id: str
    reason: str
    answer_display: str


@dataclass
class ScoredResponse:
    measure: Measure
    answers: dict[str, dict[str, Any]]
    scores: list[Score] = field(default_factory=list)
    risks: list[RiskHit] = field(default_factory=list)

    def score(self, score_id: str) -> Score | None:
        return next((s for s in self.scores if s.spec.id == score_id), None)


def item_path(link_id: str) -> str:
    """FHIRPath to a response item by linkId (what an OperationOutcome names)."""
    return f"QuestionnaireResponse.item.where(linkId='{link_id}')"


# QuestionnaireResponse.status: required binding (http://hl7.org/fhir/ValueSet/questionnaire-answers-status, R4)
RESPONSE_STATUSES = ("in-progress", "completed", "amended", "entered-in-error", "stopped")


def read_response(qr: dict[str, Any], element: str = "QuestionnaireResponse") -> tuple[dict[str, Any], list[Problem]]:
    """A sender's QuestionnaireResponse checked as FHIR R4: (the response as its R4B model writes it, []), or ({}, the
    problems, each named from `element`, where it sits in the input). The model's checks (known elements, types,
    cardinality, one value[x]), then `status` against its required value set, which the model does not check.

    Run where a response comes in (`POST /fhir/QuestionnaireResponse`, a pathway referral's contained responses):
    what the gateway stores of it is then built from that form (`score_resources.stored_response`), as the model
    writes it (a date-time at UTC as `Z`, say), and not validated again."""
    try:
        model = QuestionnaireResponse.model_validate(qr)
    except ValidationError as exc:
        return {}, [Problem(Kind.STRUCTURE, ".".join([element, *(str(p) for p in e["loc"])]), e["msg"]) for e in exc.errors()[:20]]
    status = qr.get("status")
    if status not in RESPONSE_STATUSES:
        return {}, [Problem(Kind.VALUE, f"{element}.status", f"status {str(status)[:40]!r} is not one of {', '.join(RESPONSE_STATUSES)}")]
    return to_json_dict(model), []


def check_response(qr: dict[str, Any], catalogue: MeasureCatalogue) -> tuple[Measure, dict[str, dict[str, Any]]]:
    """The measure and {linkId: answer} for `qr`, or GatewayInputError (422) naming every failing linkId."""
    reference = qr.get("questionnaire")
    measure = catalogue.find(reference) if isinstance(reference, str) else None
    if measure is None:
        known = ", ".join(sorted(m.url for m in catalogue))
        raise GatewayInputError(
            Problem(
                Kind.UNPROCESSABLE, "QuestionnaireResponse.questionnaire", f"unknown questionnaire {str(reference)[:120]!r}; known: {known}"
            )
        )
    problems: list[Problem] = []
    answers: dict[str, dict[str, Any]] = {}
    for link_id, item in _flatten(qr.get("item") or []):
        path = item_path(link_id)
        question = measure.question(link_id)
        if question is None:
            problems.append(Problem(Kind.UNPROCESSABLE, path, f"linkId {link_id!r} is not an item of {measure.url}"))
            continue
        if link_id in answers:
            problems.append(Problem(Kind.UNPROCESSABLE, path, f"linkId {link_id!r} appears more than once"))
            continue
        given = item.get("answer") or []
        if not given:
            continue
        if len(given) > 1 and not question.get("repeats"):
            problems.append(Problem(Kind.UNPROCESSABLE, path, f"item {link_id!r} takes one answer, got {len(given)}"))
            continue
        answer = given[0]
        problem = _check_answer(measure, question, link_id, answer)
        if problem:
            problems.append(Problem(Kind.UNPROCESSABLE, path, problem))
            continue
        answers[link_id] = answer
    if qr.get("status") == "completed":
        for link_id in _required(measure):
            if link_id not in answers and not any(p.element == item_path(link_id) for p in problems):
                problems.append(
                    Problem(Kind.UNPROCESSABLE, item_path(link_id), f"required item {link_id!r} has no answer in a completed response")
                )
    if problems:
        raise GatewayInputError(problems, stage="map")
    return measure, answers


def _flatten(items: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for item in items:
        link_id = str(item.get("linkId", "")).lstrip("/")  # LHC-Forms: "/44250-9" -> "44250-9"
        out.append((link_id, item))
        out += _flatten(item.get("item") or [])
        for answer in item.get("answer") or []:
            out += _flatten(answer.get("item") or [])
    return [(link_id, item) for link_id, item in out if "answer" in item or not item.get("item")]


def _required(measure: Measure) -> list[str]:
    questions = (measure.question(link) for link in _all_link_ids(measure.questionnaire))
    return [q["linkId"] for q in questions if q and q.get("required") and q.get("type") != "group"]


def _all_link_ids(questionnaire: dict[str, Any]) -> list[str]:
    out: list[str] = []

    def walk(items: list[dict[str, Any]]) -> None:
        for item in items:
            out.append(item["linkId"])
            walk(item.get("item") or [])

    walk(questionnaire.get("item") or [])
    return out


def _check_answer(measure: Measure, question: dict[str, Any], link_id: str, answer: dict[str, Any]) -> str | None:
    qtype = question.get("type", "string")
    keys = [k for k in answer if k.startswith("value")]
    options = question.get("answerOption") or []
    allowed_keys = _VALUE_KEYS.get(qtype, ())
    if qtype == "choice" and options:  # the options say which value type answers them
        allowed_keys = tuple(dict.fromkeys(k for o in options for k in o if k.startswith("value")))
    if len(keys) != 1 or keys[0] not in allowed_keys:
        expected = " or ".join(allowed_keys) or "nothing"
        return f"item {link_id!r} is of type {qtype}: answer with {expected}, got {', '.join(keys) or 'no value'}"
    if qtype == "choice" and options:
        if _entry_for(measure, link_id, answer) is not None:
            return None
        if any(_same_option(option, answer) for option in options):
            return None
        return f"answer {_describe(answer)} is not an allowed answer for item {link_id!r}"
    return None


def _same_option(option: dict[str, Any], answer: dict[str, Any]) -> bool:
    if "valueCoding" in option and "valueCoding" in answer:
        a, b = option["valueCoding"], answer["valueCoding"]
        return bool(a.get("system") == b.get("system") and a.get("code") == b.get("code"))
    for key in ("valueInteger", "valueString"):
        if key in option and key in answer:
            return bool(option[key] == answer[key])
    return False


def _entry_for(measure: Measure, link_id: str, answer: dict[str, Any]) -> ScaleEntry | None:
    return next((entry for entry in measure.allowed(link_id) if entry.matches(answer)), None)


def _describe(answer: dict[str, Any]) -> str:
    if "valueCoding" in answer:
        coding = answer["valueCoding"]
        return f"{coding.get('system')}#{coding.get('code')}"
    return repr(next(iter(answer.values()), None))


def score_answers(measure: Measure, answers: dict[str, dict[str, Any]]) -> ScoredResponse:
    """Every score the measure defines (value or the reason there is none) and every risk item raised."""
    item_scores: dict[str, float | None] = {}
    not_applicable: set[str] = set()
    for item in measure.spec.items:
        answer = answers.get(item.link_id)
        if answer is None or item.scale is None:
            continue
        entry = _entry_for(measure, item.link_id, answer)
        if entry is None:
            continue
        if entry.score is None:
            not_applicable.add(item.link_id)
            continue
        item_scores[item.link_id] = _reverse(measure, item.scale, entry.score) if item.reversed else entry.score
    result = ScoredResponse(measure, answers)
    for spec in measure.spec.scores:
        result.scores.append(_score(measure, spec, item_scores, not_applicable))
    for item in measure.spec.items:
        answer = answers.get(item.link_id)
        if item.risk is None or answer is None:
            continue
        entry = _entry_for(measure, item.link_id, answer)
        # thresholds are on the answer's own scale, before any reversal (ReQoL-10 item 6 is both reversed and a risk item)
        if item.risk.raised_by(entry.score if entry else None, answer):
            result.risks.append(RiskHit(item.link_id, item.risk.reason, (entry.display if entry else None) or _describe(answer)))
    return result


def _reverse(measure: Measure, scale: str, score: float) -> float:
    values = [e.score for e in measure.spec.scales[scale] if e.score is not None]
    return min(values) + max(values) - score


def _score(measure: Measure, spec: ScoreSpec, item_scores: dict[str, float | None], not_applicable: set[str]) -> Score:
    """One score by its method and missing-item rule; without a value, the note says why."""
    link_ids = [i for i in measure.score_items(spec) if i not in not_applicable]
    numbers = [v for i in link_ids if (v := item_scores.get(i)) is not None]
    expected, used = len(link_ids), len(numbers)
    missing = [i for i in link_ids if item_scores.get(i) is None]
    rule = spec.missing

    def unscored(reason: str) -> Score:
        return Score(spec, None, None, used, expected, reason)

    unanswered = f"not scored: {len(missing)} item(s) unanswered ({', '.join(missing)})"
    note = None
    if not link_ids:
        return unscored("every item was answered 'not applicable'")
    if spec.method == "item":
        if not numbers:
            return unscored("not scored: item unanswered")
        value: float = numbers[0]
    elif missing and rule.rule == "none":
        return unscored(f"{unanswered}; {measure.spec.title} allows no missing items")
    elif spec.method == "sum":
        if missing and (rule.rule != "prorate" or len(missing) > (rule.max_missing or 0)):
            return unscored(f"{unanswered}; at most {rule.max_missing or 0} may be prorated")
        value = round(sum(numbers) * expected / used if missing else sum(numbers), spec.decimals or 0)
        note = f"prorated from {used} of {expected} items" if missing else None
    else:  # mean
        if missing and (rule.rule != "min_answered" or used < (rule.at_least or expected)):
            return unscored(f"not scored: {used} of {expected} items answered; at least {rule.at_least or expected} needed")
        value = round(sum(numbers) / used, spec.decimals if spec.decimals is not None else 2)
        note = f"mean of {used} of {expected} items" if missing else None
    if spec.decimals is None and float(value).is_integer():
        value = int(value)
    return Score(spec, value, spec.band_for(value), used, expected, note)
