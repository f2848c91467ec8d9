"""Scoring from the measures' data files: every band edge, every missing-item rule, reversals and risk items."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from fhir_mapping.measures import load_measures
from fhir_mapping.scoring import ScoredResponse, score_answers

CATALOGUE = load_measures()


def answer(measure_id: str, link_id: str, raw: float | None, na: bool = False) -> dict[str, Any]:
    """The answer whose own (raw, unreversed) score is `raw`, as a form would send it."""
    entries = CATALOGUE.measures[measure_id].allowed(link_id)
    entry = next(e for e in entries if (e.score is None) if na) if na else next(e for e in entries if e.score == raw)
    if entry.value is not None:
        return {"valueInteger": entry.value}
    return {"valueCoding": {"system": entry.system, "code": entry.code}}


def score(measure_id: str, raws: Mapping[str, float], na: tuple[str, ...] = ()) -> ScoredResponse:
    measure = CATALOGUE.measures[measure_id]
    answers = {link: answer(measure_id, link, value) for link, value in raws.items()}
    answers |= {link: answer(measure_id, link, None, na=True) for link in na}
    return score_answers(measure, answers)


def items(measure_id: str) -> list[str]:
    return [i.link_id for i in CATALOGUE.measures[measure_id].spec.items if i.scale]


def spread(measure_id: str, total: int, top: int) -> dict[str, int]:
    """Raw answers (no reversed items assumed) adding up to `total`, each at most `top`."""
    out: dict[str, int] = {}
    left = total
    for link in items(measure_id):
        out[link] = min(top, left)
        left -= out[link]
    assert left == 0
    return out


def total_and_band(result: ScoredResponse, score_id: str = "total") -> tuple[float | None, str | None]:
    found = result.score(score_id)
    assert found is not None
    return found.value, found.band.code if found.band else None


@pytest.mark.parametrize(
    ("total", "band"),
    [
        (0, "none-minimal"),
        (4, "none-minimal"),
        (5, "mild"),
        (9, "mild"),
        (10, "moderate"),
        (14, "moderate"),
        (15, "moderately-severe"),
        (19, "moderately-severe"),
        (20, "severe"),
        (27, "severe"),
    ],
)
def test_phq9_band_edges_TT_05(total: int, band: str) -> None:
    """TT-05: PHQ-9 bands 0-4 / 5-9 / 10-14 / 15-19 / 20-27."""
    assert total_and_band(score("phq-9", spread("phq-9", total, 3))) == (total, band)


@pytest.mark.parametrize(
    ("total", "band"),
    [(0, "minimal"), (4, "minimal"), (5, "mild"), (9, "mild"), (10, "moderate"), (14, "moderate"), (15, "severe"), (21, "severe")],
)
def test_gad7_band_edges_use_the_standard_cut_offs_TT_06(total: int, band: str) -> None:
    """TT-06: standard 5/10/15 cut-offs, not the seed's overlapping 5-10/11-15/15-21 table."""
    assert total_and_band(score("gad-7", spread("gad-7", total, 3))) == (total, band)


def test_gad7_item2_loinc_quirk_more_days_than_not_scores_2_TT_06() -> None:
    """TT-06: LOINC's GAD-7 item 2 uses LA18938-3 'More days than not' for 2."""
    measure = CATALOGUE.measures["gad-7"]
    answers = {link: answer("gad-7", link, 0) for link in items("gad-7")}
    answers["68509-9"] = {"valueCoding": {"system": "http://loinc.org", "code": "LA18938-3"}}
    assert total_and_band(score_answers(measure, answers)) == (2, "minimal")


def test_caseness_cut_offs_phq9_10_and_gad7_8() -> None:
    phq = CATALOGUE.measures["phq-9"].spec.scores[0].caseness
    gad = CATALOGUE.measures["gad-7"].spec.scores[0].caseness
    assert phq is not None and gad is not None
    assert (phq.met(9), phq.met(10), gad.met(7), gad.met(8)) == (False, True, False, True)


def test_phq9_with_a_missing_item_has_no_total_and_says_why_TT_05() -> None:
    """TT-05: PHQ-9 allows no missing items (no prorating): no total, and the reason names the item."""
    raws = spread("phq-9", 12, 3)
    del raws["44252-5"]
    found = score("phq-9", raws).score("total")
    assert found is not None and found.value is None and found.band is None
    assert "44252-5" in (found.note or "") and "allows no missing items" in (found.note or "")


def test_phq9_item9_above_zero_is_a_risk_even_when_the_total_is_low_or_incomplete_CAS_04() -> None:
    """CAS-04/CAS-10: item 9 > 0 raises a risk whatever the total."""
    raws = dict.fromkeys(items("phq-9"), 0) | {"44260-8": 1}
    del raws["44250-9"]
    result = score("phq-9", raws)
    assert [r.link_id for r in result.risks] == ["44260-8"]
    assert result.score("total").value is None  # type: ignore[union-attr]
    assert score("phq-9", dict.fromkeys(items("phq-9"), 0)).risks == []


@pytest.mark.parametrize(
    ("total", "band"),
    [
        (0, "healthy"),
        (5, "healthy"),
        (6, "low"),
        (10, "low"),
        (11, "mild"),
        (14, "mild"),
        (15, "moderate"),
        (19, "moderate"),
        (20, "moderate-severe"),
        (24, "moderate-severe"),
        (25, "severe"),
    ],
)
def test_core10_band_edges_with_healthy_and_low_below_the_cut_off(total: int, band: str) -> None:
    """Barkham et al. 2013: healthy 0-5 and low 6-10 below the clinical cut-off 11 (issue 33 item 11)."""
    raws = dict.fromkeys(items("core-10"), 0)
    raws["core-10-2-support"] = raws["core-10-3-cope"] = 4  # reversed items: raw 4 scores 0
    left = total
    for link in items("core-10"):
        if link in ("core-10-2-support", "core-10-3-cope", "core-10-6-plans-to-end-life"):
            continue
        raws[link] = min(4, left)
        left -= raws[link]
    assert left == 0
    assert total_and_band(score("core-10", raws)) == (total, band)


def test_core10_reverses_items_2_and_3() -> None:
    raws = dict.fromkeys(items("core-10"), 0)
    assert total_and_band(score("core-10", raws))[0] == 8  # items 2 and 3 at raw 0 score 4 each


def test_core10_prorates_one_missing_item_but_not_two_keeping_the_exact_value() -> None:
    raws = dict.fromkeys(items("core-10"), 2)
    raws.pop("core-10-10-unwanted-images")
    one = score("core-10", raws).score("total")
    assert one is not None and one.value == 20 and "prorated from 9 of 10" in (one.note or "")
    raws["core-10-1-tense"] = 3
    exact = score("core-10", raws).score("total")
    assert exact is not None and exact.value == 19 * 10 / 9 and exact.band is not None  # 21.11..., not rounded to 21
    assert exact.band.code == "moderate-severe"
    raws.pop("core-10-9-unhappy")
    two = score("core-10", raws).score("total")
    assert two is not None and two.value is None and "at most 1" in (two.note or "")


@pytest.mark.parametrize(("answered", "band", "case"), [(5, "healthy", False), (6, "low", False), (9, "low", False), (10, "mild", True)])
def test_core10_exact_prorated_total_between_band_edges_is_in_the_band_it_has_reached(answered: int, band: str, case: bool) -> None:
    """A prorated 5.56 has not reached 6 (healthy); 10.0 is low; 11.1 has passed the cut-off 11 (mild), as caseness reads it."""
    raws = dict.fromkeys(items("core-10"), 0) | {"core-10-2-support": 4, "core-10-3-cope": 4}
    raws.pop("core-10-10-unwanted-images")
    left = answered
    for link in ("core-10-1-tense", "core-10-4-talking-too-much", "core-10-5-panic", "core-10-7-sleep"):
        raws[link] = min(4, left)
        left -= raws[link]
    found = score("core-10", raws).score("total")
    assert found is not None and found.value == pytest.approx(answered * 10 / 9) and found.band is not None
    assert found.band.code == band
    assert found.value is not None and found.spec.caseness is not None and found.spec.caseness.met(found.value) is case


def test_core10_item6_above_zero_is_a_risk() -> None:
    raws = dict.fromkeys(items("core-10"), 0) | {"core-10-6-plans-to-end-life": 1}
    assert [r.link_id for r in score("core-10", raws).risks] == ["core-10-6-plans-to-end-life"]


@pytest.mark.parametrize(
    ("total", "band"),
    [(9, "subclinical"), (10, "significant-impairment"), (20, "significant-impairment"), (21, "moderately-severe-or-worse")],
)
def test_wsas_bands_follow_mundt_with_20_in_the_middle_band(total: int, band: str) -> None:
    assert total_and_band(score("wsas", spread("wsas", total, 8))) == (total, band)


def test_wsas_allows_no_missing_item_but_work_can_be_not_applicable_TT_11() -> None:
    """TT-11: WSAS (minimum data set) has no prorating; the work item may be not applicable."""
    raws = dict.fromkeys(items("wsas"), 2)
    del raws["wsas-work"]
    assert score("wsas", raws).score("total").value is None  # type: ignore[union-attr]
    retired = score("wsas", raws, na=("wsas-work",)).score("total")
    assert retired is not None and retired.value == 8 and retired.expected == 4


def test_dialog_means_and_the_minimum_answered_rule_PC_11() -> None:
    """PC-11: DIALOG subjective quality of life = mean of items 1-8, treatment satisfaction = mean of 9-11."""
    links = items("dialog")
    raws = dict(zip(links, [4, 5, 4, 5, 4, 5, 4, 5, 6, 6, 7], strict=True))
    result = score("dialog", raws)
    assert result.score("sqol-mean").value == 4.5  # type: ignore[union-attr]
    assert result.score("treatment-mean").value == 6.33  # type: ignore[union-attr]
    six_of_eight = {k: v for k, v in raws.items() if k not in links[6:8]}
    assert score("dialog", six_of_eight).score("sqol-mean").value == 4.5  # type: ignore[union-attr]
    five_of_eight = {k: v for k, v in raws.items() if k not in links[5:8]}
    assert score("dialog", five_of_eight).score("sqol-mean").value is None  # type: ignore[union-attr]


def test_reqol10_reverses_negative_items_and_flags_item6_on_its_own_scale_PC_14() -> None:
    """PC-14: ReQoL-10, one of the primary care outcome measures; no total if an item is missing."""
    links = items("reqol-10")
    best = {link: (0 if CATALOGUE.measures["reqol-10"].item_spec(link).reversed else 4) for link in links}  # type: ignore[union-attr]
    assert total_and_band(score("reqol-10", best))[0] == 40
    incomplete = {k: v for k, v in best.items() if k != "reqol-2-trust-others"}
    assert score("reqol-10", incomplete).score("total").value is None  # type: ignore[union-attr]
    result = score("reqol-10", best | {"reqol-6-life-not-worth-living": 4})  # "most or all of the time"
    assert total_and_band(result)[0] == 36
    assert [r.link_id for r in result.risks] == ["reqol-6-life-not-worth-living"]


def test_gbo_scores_each_goal_on_its_own_PC_14() -> None:
    """PC-14: GBO records up to 3 goals, each scored on its own."""
    result = score("gbo", {"gbo-goal-1-rating": 3, "gbo-goal-2-rating": 7})
    assert (result.score("goal-1").value, result.score("goal-2").value, result.score("goal-3").value) == (3, 7, None)  # type: ignore[union-attr]


def test_iapt_phobia_items_are_reported_separately_TT_11() -> None:
    """TT-11: the phobia scales (minimum data set) are three separate scores."""
    result = score("iapt-phobia", dict(zip(items("iapt-phobia"), [2, 5, 8], strict=True)))
    assert [s.value for s in result.scores] == [2, 5, 8]


def test_red_flag_yes_is_a_risk_CAS_04() -> None:
    """CAS-04: a red-flag question answered yes."""
    measure = CATALOGUE.measures["mhcas-red-flags"]
    result = score_answers(measure, {"rf-harm-to-self": {"valueBoolean": True}, "rf-harm-to-others": {"valueBoolean": False}})
    assert [r.link_id for r in result.risks] == ["rf-harm-to-self"]
