"""Paired measures for one patient: first and latest score, change, and the verdicts the services report.

Per score (from the stored score Observations): first/latest, change, reliable improvement
and deterioration (the measure's reliable-change threshold), caseness and recovery
(its cut-off), DIALOG improvement (PC-11: mean up by >= 0.25). Across PHQ-9 and GAD-7,
the NHS Talking Therapies verdicts (caseness = PHQ-9 >= 10 or GAD-7 >= 8; recovery;
reliable improvement without reliable deterioration on the other; reliable recovery),
and the contacts with a complete minimum data set (TT-11).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from fhir_mapping.measures import Measure, MeasureCatalogue, ScoreSpec

__all__ = ["outcome_summary", "MINIMUM_DATA_SET"]

# TT-11: PHQ-9, GAD-7, phobia scales, employment status and WSAS at every clinical contact.
# Employment status counts when an Observation of category social-history is recorded for the contact.
MINIMUM_DATA_SET = ("phq-9", "gad-7", "iapt-phobia", "wsas", "employment-status")


def _index(catalogue: MeasureCatalogue) -> dict[tuple[str, str], tuple[Measure, ScoreSpec]]:
    out = {}
    for measure in catalogue:
        for spec in measure.spec.scores:
            primary = spec.codes[0]
            out[(primary.system, primary.code)] = (measure, spec)
    return out


def _point(obs: dict[str, Any]) -> dict[str, Any]:
    point = {"date": obs["effectiveDateTime"], "value": obs["valueQuantity"]["value"], "observation": f"Observation/{obs['id']}"}
    if obs.get("interpretation"):
        point["band"] = obs["interpretation"][0].get("text")
    return point


def _verdicts(spec: ScoreSpec, first: float, latest: float) -> dict[str, Any]:
    change = round(latest - first, 2)
    better = change if spec.higher_is_better else -change
    out: dict[str, Any] = {"change": change}
    if spec.reliable_change is not None:
        out["reliable_improvement"] = better >= spec.reliable_change
        out["reliable_deterioration"] = -better >= spec.reliable_change
    if spec.caseness is not None:
        out["caseness_first"] = spec.caseness.met(first)
        out["caseness_latest"] = spec.caseness.met(latest)
        out["recovery"] = out["caseness_first"] and not out["caseness_latest"]
    if spec.improvement_at_least is not None:
        out["improvement"] = better >= spec.improvement_at_least  # PC-11 for DIALOG
    return out


def outcome_summary(
    patient_id: str, observations: list[dict[str, Any]], responses: list[dict[str, Any]], catalogue: MeasureCatalogue
) -> dict[str, Any]:
    """The summary for `patient_id` from its score Observations (oldest first) and QuestionnaireResponses."""
    index = _index(catalogue)
    series: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for obs in observations:
        for coding in obs.get("code", {}).get("coding", []):
            key = (coding.get("system"), coding.get("code"))
            if key in index and "valueQuantity" in obs:
                measure, spec = index[key]  # type: ignore[index]
                series[(measure.id, spec.id)].append(obs)
                break
    measures: dict[str, dict[str, Any]] = {}
    for (measure_id, score_id), points in sorted(series.items()):
        measure = catalogue.measures[measure_id]
        spec = next(s for s in measure.spec.scores if s.id == score_id)
        points.sort(key=lambda o: o["effectiveDateTime"])
        entry: dict[str, Any] = {"count": len(points), "first": _point(points[0]), "latest": _point(points[-1])}
        if len(points) > 1:
            entry.update(_verdicts(spec, points[0]["valueQuantity"]["value"], points[-1]["valueQuantity"]["value"]))
        measures.setdefault(measure_id, {"title": measure.spec.title, "scores": {}})["scores"][score_id] = entry
    return {
        "patient": f"Patient/{patient_id}",
        "measures": measures,
        "talking_therapies": _talking_therapies(measures, catalogue),
        "minimum_data_set": _minimum_data_set(responses, observations, catalogue),
    }


def _talking_therapies(measures: dict[str, dict[str, Any]], catalogue: MeasureCatalogue) -> dict[str, Any] | None:
    """NHS Talking Therapies paired verdicts from the first and latest PHQ-9 and GAD-7 totals."""
    phq = measures.get("phq-9", {}).get("scores", {}).get("total")
    gad = measures.get("gad-7", {}).get("scores", {}).get("total")
    if not phq or not gad or phq["count"] < 2 or gad["count"] < 2:
        return {"paired": False, "reason": "needs at least two PHQ-9 and two GAD-7 totals"}
    specs = {m: next(s for s in catalogue.measures[m].spec.scores if s.id == "total") for m in ("phq-9", "gad-7")}

    def caseness(which: str) -> bool:
        cut_offs = [(specs[m].caseness, v[which]["value"]) for m, v in (("phq-9", phq), ("gad-7", gad))]
        return any(cut.met(value) for cut, value in cut_offs if cut is not None)

    improved = phq.get("reliable_improvement") or gad.get("reliable_improvement")
    deteriorated = phq.get("reliable_deterioration") or gad.get("reliable_deterioration")
    recovery = caseness("first") and not caseness("latest")
    reliable_improvement = bool(improved and not deteriorated)
    return {
        "paired": True,
        "caseness_first": caseness("first"),
        "caseness_latest": caseness("latest"),
        "recovery": recovery,
        "reliable_improvement": reliable_improvement,
        "reliable_deterioration": bool(deteriorated),
        "reliable_recovery": recovery and reliable_improvement,
    }


def _minimum_data_set(responses: list[dict[str, Any]], observations: list[dict[str, Any]], catalogue: MeasureCatalogue) -> dict[str, Any]:
    """TT-11: per contact (Encounter), which minimum-data-set elements were recorded."""
    by_contact: dict[str, set[str]] = defaultdict(set)
    for qr in responses:
        encounter = (qr.get("encounter") or {}).get("reference")
        measure = catalogue.find(qr.get("questionnaire", ""))
        if encounter and measure and qr.get("status") == "completed":
            by_contact[encounter].add(measure.id)
    for obs in observations:
        encounter = (obs.get("encounter") or {}).get("reference")
        categories = {c.get("code") for cat in obs.get("category", []) for c in cat.get("coding", [])}
        if encounter and "social-history" in categories:
            by_contact[encounter].add("employment-status")
    contacts = [{"encounter": enc, "missing": [e for e in MINIMUM_DATA_SET if e not in have]} for enc, have in sorted(by_contact.items())]
    return {
        "required": list(MINIMUM_DATA_SET),
        "contacts": len(contacts),
        "complete": sum(1 for c in contacts if not c["missing"]),
        "per_contact": contacts,
    }
