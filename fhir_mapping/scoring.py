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

__all__ = ["Score", "RiskHit", "ScoredResponse", "check_response", "score_answers", "item_path", "risk_answers", "unanswered_required"]

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
        for link_id in unanswered_required(measure, answers):
            if not any(p.element == item_path(link_id) for p in problems):
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


def unanswered_required(measure: Measure, answers: dict[str, dict[str, Any]]) -> list[str]:
    """The required items a completed response must still answer: only those enabled (`enableWhen`, so GBO's goal 2
    and 3 ratings only when their goal is given, PC-14), and not those the instrument's own scoring rule lets it
    prorate over (CORE-10: one item), since that score is still computed (issue 33)."""
    missing = [link for link in _enabled_required(measure, measure.questionnaire.get("item") or [], answers) if link not in answers]
    if not missing:
        return []
    scores = score_answers(measure, answers).scores
    return [link for link in missing if not _prorated_over(measure, scores, link)]


def _enabled_required(measure: Measure, items: list[dict[str, Any]], answers: dict[str, dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for item in items:
        if not _enabled(item, answers):
            continue  # a disabled item, and every item under it, is never required (FHIR R4 Questionnaire.item.enableWhen)
        if item.get("required") and item.get("type") != "group":
            out.append(item["linkId"])
        out += _enabled_required(measure, item.get("item") or [], answers)
    return out


def _prorated_over(measure: Measure, scores: list[Score], link_id: str) -> bool:
    """A missing item every score of which is prorated (a published rule: `prorate`) and still has a value."""
    using = [s for s in scores if link_id in measure.score_items(s.spec)]
    return bool(using) and all(s.spec.missing.rule == "prorate" and s.value is not None for s in using)


def _enabled(item: dict[str, Any], answers: dict[str, dict[str, Any]]) -> bool:
    """FHIR R4 enableWhen over the checked answers: `all` (the default) or `any` of the conditions."""
    conditions = item.get("enableWhen") or []
    if not conditions:
        return True
    results = [_condition_met(c, answers.get(str(c.get("question")))) for c in conditions]
    return any(results) if item.get("enableBehavior") == "any" else all(results)


def _condition_met(condition: dict[str, Any], answer: dict[str, Any] | None) -> bool:
    operator = str(condition.get("operator"))
    expected_key = next((k for k in condition if k.startswith("answer")), None)
    expected: Any = condition[expected_key] if expected_key else None
    if operator == "exists":
        return (answer is not None) is bool(expected)
    if answer is None or expected_key is None:
        return False  # an unanswered question meets no comparison, `!=` included (R4 leaves it open)
    given = answer.get("value" + expected_key.removeprefix("answer"))
    if expected_key == "answerCoding":
        wanted = expected if isinstance(expected, dict) else {}
        same = isinstance(given, dict) and (given.get("system"), given.get("code")) == (wanted.get("system"), wanted.get("code"))
        return same if operator == "=" else (not same if operator == "!=" else False)
    if given is None:
        return False
    compare = {"=": given == expected, "!=": given != expected}
    if operator in compare:
        return compare[operator]
    try:
        return {">": given > expected, "<": given < expected, ">=": given >= expected, "<=": given <= expected}[operator]
    except (KeyError, TypeError):
        return False


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
        hit = _risk_hit(measure, item.link_id, answer) if answer is not None else None
        if hit:
            result.risks.append(hit)
    return result


def _risk_hit(measure: Measure, link_id: str, answer: dict[str, Any]) -> RiskHit | None:
    item = measure.item_spec(link_id)
    if item is None or item.risk is None:
        return None
    entry = _entry_for(measure, link_id, answer)
    # thresholds are on the answer's own scale, before any reversal (ReQoL-10 item 6 is both reversed and a risk item)
    if item.risk.raised_by(entry.score if entry else None, answer):
        return RiskHit(link_id, item.risk.reason, (entry.display if entry else None) or _describe(answer))
    return None


def risk_answers(qr: dict[str, Any], catalogue: MeasureCatalogue) -> list[RiskHit]:
    """The risk items (PHQ-9 item 9, CORE-10 item 6, ReQoL-10 item 6, red flags) a response raises, read before, and
    whatever, anything else in it is refused (issue 33: a risk answer is never lost). Never raises: an answer it cannot
    read as one of the item's own answers raises nothing here (the refusal names it)."""
    reference = qr.get("questionnaire")
    measure = catalogue.find(reference) if isinstance(reference, str) else None
    items = qr.get("item")
    if measure is None or not isinstance(items, list):
        return []
    hits: dict[str, RiskHit] = {}
    try:
        flat = _flatten(items)
    except (AttributeError, TypeError):
        return []  # not a list of items: nothing can be read as an answer
    for link_id, item in flat:
        question = measure.question(link_id)
        given = item.get("answer")
        if question is None or link_id in hits or not isinstance(given, list):
            continue
        for answer in given:  # any answer given (even one too many) that raises the risk is acted on
            if isinstance(answer, dict) and _check_answer(measure, question, link_id, answer) is None:
                hit = _risk_hit(measure, link_id, answer)
                if hit:
                    hits[link_id] = hit
                    break
    return list(hits.values())


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
        if missing:  # the exact prorated value (issue 33), rounded only where the scoring file sets `decimals`
            prorated = sum(numbers) * expected / used
            value = prorated if spec.decimals is None else round(prorated, spec.decimals)
            formula = f"{_number(sum(numbers))} x {expected} / {used}"
            note = f"prorated from {used} of {expected} items ({formula}; {', '.join(missing)} unanswered)"
        else:
            value = round(sum(numbers), spec.decimals or 0)
    else:  # mean
        if missing and (rule.rule != "min_answered" or used < (rule.at_least or expected)):
            return unscored(f"not scored: {used} of {expected} items answered; at least {rule.at_least or expected} needed")
        value = round(sum(numbers) / used, spec.decimals if spec.decimals is not None else 2)
        note = f"mean of {used} of {expected} items" if missing else None
    if spec.decimals is None and float(value).is_integer():
        value = int(value)
    return Score(spec, value, spec.band_for(value), used, expected, note)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
