"""Outcome measures as data: shipped Questionnaires + scoring specs, loaded and cross-checked.

Each measure is two files in fhir_mapping/questionnaires/: `<id>.questionnaire.json`
(the canonical FHIR Questionnaire) and `<id>.scoring.yaml` (answer scores, scores,
bands, missing-item rules, risk items; schema `measure-scoring/1`, every value with
its source). A bad file stops start-up with the file and field named.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "Measure",
    "MeasureCatalogue",
    "MeasureFileError",
    "ScoringSpec",
    "ScoreSpec",
    "ScaleEntry",
    "load_measures",
    "QUESTIONNAIRES_DIR",
]

QUESTIONNAIRES_DIR = Path(__file__).parent / "questionnaires"


class MeasureFileError(Exception):
    """A Questionnaire or scoring file is unreadable, breaks the schema, or disagrees with its pair."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Code(_Strict):
    system: str
    code: str
    display: str | None = None


class ScaleEntry(_Strict):
    """One allowed answer: a Coding (system+code) or an integer value, and its score (None = not applicable)."""

    system: str | None = None
    code: str | None = None
    value: int | None = None
    display: str | None = None
    score: float | None

    @model_validator(mode="after")
    def _one_form(self) -> ScaleEntry:
        if (self.code is None) == (self.value is None) or (self.code is not None and self.system is None):
            raise ValueError("an answer is either {system, code} or {value}")
        return self

    def matches(self, answer: dict[str, Any]) -> bool:
        if self.value is not None:
            return answer.get("valueInteger") == self.value
        coding = answer.get("valueCoding") or {}
        return coding.get("system") == self.system and coding.get("code") == self.code


class Risk(_Strict):
    above: float | None = None
    equals: bool | None = None
    reason: str

    def raised_by(self, score: float | None, answer: dict[str, Any]) -> bool:
        if self.equals is not None:
            return answer.get("valueBoolean") is self.equals
        return score is not None and self.above is not None and score > self.above


class ItemSpec(_Strict):
    link_id: str
    scale: str | None = None
    reversed: bool = False
    also_accept: list[ScaleEntry] = Field(default_factory=list)
    risk: Risk | None = None


class Missing(_Strict):
    rule: Literal["none", "prorate", "min_answered"]
    max_missing: int | None = Field(default=None, ge=0)
    at_least: int | None = Field(default=None, ge=1)


class Band(_Strict):
    up_to: float
    code: str
    display: str


class Caseness(_Strict):
    at_least: float | None = None
    below: float | None = None

    def met(self, value: float) -> bool:
        if self.at_least is not None:
            return value >= self.at_least
        return self.below is not None and value < self.below


class ScoreSpec(_Strict):
    id: str
    method: Literal["sum", "mean", "item"]
    items: Literal["all"] | list[str]
    range: tuple[float, float]
    decimals: int | None = None
    missing: Missing
    codes: list[Code] = Field(min_length=1)
    bands: list[Band] = Field(default_factory=list)
    caseness: Caseness | None = None
    reliable_change: float | None = None
    improvement_at_least: float | None = None
    higher_is_better: bool

    @model_validator(mode="after")
    def _bands_ascending(self) -> ScoreSpec:
        limits = [b.up_to for b in self.bands]
        if limits != sorted(limits) or (limits and limits[-1] != self.range[1]):
            raise ValueError(f"score {self.id}: bands must ascend and end at the range maximum {self.range[1]}")
        return self

    def band_for(self, value: float) -> Band | None:
        """The band of `value`. Bands of a sum end at whole scores: an exact prorated total between two edges is in the
        band of the whole score it has reached (CORE-10 10.6 is "low", it has not reached the cut-off 11), as caseness reads it."""
        if self.method == "sum" and all(float(b.up_to).is_integer() for b in self.bands):
            value = math.floor(value)
        return next((b for b in self.bands if value <= b.up_to), None)


class ScoringSpec(_Strict):
    schema_: Literal["measure-scoring/1"] = Field(alias="schema")
    measure: str
    title: str
    questionnaire: str
    identified_by: list[Code] = Field(default_factory=list)
    scales: dict[str, list[ScaleEntry]] = Field(default_factory=dict)
    items: list[ItemSpec] = Field(default_factory=list)
    scores: list[ScoreSpec] = Field(default_factory=list)


@dataclass(frozen=True)
class Measure:
    """A Questionnaire and its scoring spec, with the lookups the scorer needs."""

    questionnaire: dict[str, Any]
    spec: ScoringSpec

    @property
    def id(self) -> str:
        return self.spec.measure

    @property
    def url(self) -> str:
        return str(self.questionnaire["url"])

    def question(self, link_id: str) -> dict[str, Any] | None:
        return _questions(self.questionnaire).get(link_id)

    def item_spec(self, link_id: str) -> ItemSpec | None:
        return next((i for i in self.spec.items if i.link_id == link_id), None)

    def allowed(self, link_id: str) -> list[ScaleEntry]:
        spec = self.item_spec(link_id)
        if spec is None or spec.scale is None:
            return []
        return [*self.spec.scales[spec.scale], *spec.also_accept]

    def score_items(self, score: ScoreSpec) -> list[str]:
        return [i.link_id for i in self.spec.items if i.scale] if score.items == "all" else list(score.items)


def _questions(questionnaire: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}

    def walk(items: list[dict[str, Any]]) -> None:
        for item in items:
            out[item["linkId"]] = item
            walk(item.get("item") or [])

    walk(questionnaire.get("item") or [])
    return out


class MeasureCatalogue:
    """Every shipped measure, found by canonical URL (with or without |version), panel code or name."""

    def __init__(self, measures: list[Measure]) -> None:
        self.measures = {m.id: m for m in measures}

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.measures.values())

    def find(self, reference: str) -> Measure | None:
        """Resolve `QuestionnaireResponse.questionnaire`: our canonical URL, or a reference ending in a panel code."""
        canonical = reference.split("|", 1)[0].rstrip("/")
        for measure in self:
            if canonical == measure.url:
                return measure
        tail = canonical.rsplit("/", 1)[-1]
        for measure in self:
            if any(tail == code.code for code in measure.spec.identified_by) or tail == measure.id:
                return measure
        return None

    def by_code(self, system: str | None, code: str) -> list[Measure]:
        return [
            m for m in self if any(c.code == code and (system is None or c.system == system) for c in [*m.spec.identified_by, *_codes(m)])
        ]


def _codes(measure: Measure) -> list[Code]:
    return [Code.model_validate(c) for c in measure.questionnaire.get("code") or []]


def load_measures(directory: Path = QUESTIONNAIRES_DIR) -> MeasureCatalogue:
    """Load every `<id>.questionnaire.json` + `<id>.scoring.yaml` pair and check they agree."""
    measures = []
    for q_path in sorted(directory.glob("*.questionnaire.json")):
        stem = q_path.name.removesuffix(".questionnaire.json")
        s_path = directory / f"{stem}.scoring.yaml"
        try:
            questionnaire = json.loads(q_path.read_text(encoding="utf-8"))
            spec = ScoringSpec.model_validate(yaml.safe_load(s_path.read_text(encoding="utf-8")))
        except FileNotFoundError as exc:
            raise MeasureFileError(f"{q_path.name}: no scoring file {s_path.name}") from exc
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise MeasureFileError(f"{stem}: cannot read: {exc}") from None
        except ValidationError as exc:
            details = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            raise MeasureFileError(f"{s_path.name}: {details}") from None
        measure = Measure(questionnaire, spec)
        _cross_check(measure, stem)
        measures.append(measure)
    if not measures:
        raise MeasureFileError(f"no questionnaires in {directory}")
    return MeasureCatalogue(measures)


def _cross_check(measure: Measure, stem: str) -> None:
    spec, name = measure.spec, f"{stem}.scoring.yaml"
    if spec.measure != stem or measure.questionnaire.get("id") != stem or spec.questionnaire != measure.url:
        raise MeasureFileError(f"{name}: measure id, Questionnaire.id and url must agree with the file name {stem!r}")
    for item in spec.items:
        question = measure.question(item.link_id)
        if question is None:
            raise MeasureFileError(f"{name}: item {item.link_id!r} is not in the Questionnaire")
        if item.scale is not None and item.scale not in spec.scales:
            raise MeasureFileError(f"{name}: item {item.link_id!r} uses unknown scale {item.scale!r}")
        for entry in spec.scales.get(item.scale or "", []):
            if not any(entry.matches(option) for option in question.get("answerOption") or []):
                raise MeasureFileError(f"{name}: item {item.link_id!r}: answer {entry.code or entry.value!r} is not an answerOption")
    known = {i.link_id for i in spec.items}
    for score in spec.scores:
        missing = [i for i in measure.score_items(score) if i not in known]
        if missing:
            raise MeasureFileError(f"{name}: score {score.id!r} uses items with no scale: {missing}")
