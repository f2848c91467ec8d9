"""Pathway rules, table-driven: one row per rule id and edge (PC-01..PC-07, TT-01..TT-07). Pure: no database."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from adapters.pathway_referral import parse_pathway_referral
from adapters.problems import GatewayInputError, Kind
from gateway.cas.rules.schema import RuleFileError
from gateway.pathways.demo import gad7, phq9, referral
from gateway.pathways.rules.clocks import Pc08Facts, due_time, pc08_stop_time
from gateway.pathways.rules.routing import MeasureFact, route_referral
from gateway.pathways.rules.schema import load_pathways

REGISTRY = load_pathways()
RECEIVED = "2026-11-23T12:00:00+00:00"
PHQ = {"none-minimal": 3, "mild": 7, "moderate": 12, "moderately-severe": 16, "severe": 22}


def decide(service: str, born: str, dialog_plus: bool = False, measures: dict[str, tuple[float, str]] | None = None, **kw):  # type: ignore[no-untyped-def]
    kw.setdefault("practice", "C87001" if service.startswith("rdash-rotherham") else "C86001" if "doncaster" in service else "F81001")
    body = referral(service, "R-1", kw.pop("received", RECEIVED), born, **kw)
    facts = {m: MeasureFact(m, v, b) for m, (v, b) in (measures or {}).items()}
    return route_referral(parse_pathway_referral(json.dumps(body).encode()), REGISTRY.services[service], facts, dialog_plus)


# --- primary care ---------------------------------------------------------------------------------------

PC_ROWS = [
    # id, born, extra, outcome, step/route, rule
    ("aged exactly 17y6m on the referral date", "2009-05-23", {}, "accept", "mhp", "PC-01"),
    ("one day short of 17y6m", "2009-05-24", {}, "signpost", "signpost", "PC-01"),
    ("crisis response is never booked", "1980-01-01", {"findings": ("crisis-response",)}, "redirect", "crisis", "PC-02"),
    ("needs Talking Therapies", "1980-01-01", {"findings": ("needs-talking-therapies",)}, "redirect", "talking-therapies", "PC-02"),
    ("ADHD/ASD assessment is signposted", "1980-01-01", {"findings": ("adhd-asd-assessment",)}, "signpost", "signpost", "PC-02"),
    ("already under specialist MH services", "1980-01-01", {"findings": ("under-specialist-mh",)}, "redirect", "secondary-care", "PC-02"),
    (
        "crisis wins over Talking Therapies",
        "1980-01-01",
        {"findings": ("needs-talking-therapies", "crisis-response")},
        "redirect",
        "crisis",
        "PC-02",
    ),
    ("GP practice outside the place's PCNs", "1980-01-01", {"practice": "Y00001"}, "signpost", "signpost", "PC-01"),
    ("triage coach for an adult", "1980-01-01", {"step": "mhwbtc", "source": "care-navigator"}, "accept", "mhwbtc", "PC-03"),
    ("triage coach does not take under 18s", "2008-12-01", {"step": "mhwbtc"}, "accept", "mhp", "PC-03"),
    (
        "triage coach does not take eating disorders",
        "1980-01-01",
        {"step": "mhwbtc", "findings": ("eating-disorder",)},
        "accept",
        "mhp",
        "PC-03",
    ),
    (
        "triage coach does not take people open to CAMHS",
        "1980-01-01",
        {"step": "mhwbtc", "findings": ("open-to-camhs",)},
        "accept",
        "mhp",
        "PC-03",
    ),
    ("GP step-up to the hub is seen by an MHP first", "1980-01-01", {"step": "pcmhh", "source": "gp"}, "accept", "mhp", "PC-06"),
    ("secondary care steps down to the hub", "1980-01-01", {"step": "pcmhh", "source": "secondary-care"}, "accept", "pcmhh", "PC-06"),
]


@pytest.mark.parametrize(("name", "born", "extra", "outcome", "where", "rule"), PC_ROWS, ids=[r[0] for r in PC_ROWS])
def test_primary_care_routing_PC_01_02_03_06(name: str, born: str, extra: dict, outcome: str, where: str, rule: str) -> None:  # type: ignore[type-arg]
    decision = decide("rdash-rotherham", born, **extra)
    assert decision.outcome == outcome, decision.trace
    assert (decision.step if outcome == "accept" else decision.route) == where
    assert rule in decision.rule_ids
    if outcome != "accept":
        assert decision.where and decision.step is None  # PC-13: a named destination, never booked


def test_a_crisis_referral_is_never_booked_and_names_the_crisis_route_PC_02_PC_13() -> None:
    decision = decide("rdash-rotherham", "1980-01-01", findings=("crisis-response",), step="mhp")
    assert decision.outcome == "redirect" and decision.step is None and decision.clocks == []
    assert "crisis" in (decision.where or "").lower() and "PC-13" in decision.rule_ids


def test_step_up_to_the_hub_after_an_mhp_needs_a_dialog_plus_care_plan_PC_06() -> None:
    with pytest.raises(GatewayInputError) as refused:
        decide("rdash-rotherham", "1980-01-01", step="pcmhh", source="mhp")
    first = refused.value.first_error
    assert first is not None
    assert first.kind is Kind.BUSINESS_RULE and "DIALOG+" in first.message
    accepted = decide("rdash-rotherham", "1980-01-01", step="pcmhh", source="mhp", dialog_plus=True)
    assert accepted.step == "pcmhh" and accepted.clocks == ["pcmhh-screening", "pcmhh-4-week-wait"]


def test_unknown_findings_are_refused_naming_them() -> None:
    with pytest.raises(GatewayInputError) as refused:
        decide("rdash-rotherham", "1980-01-01", findings=("not-a-finding",))
    first = refused.value.first_error
    assert first is not None
    assert first.element == "ServiceRequest.reasonCode" and "not-a-finding" in first.message


# --- Talking Therapies ----------------------------------------------------------------------------------

AGE_ROWS = [
    ("north-essex-mid", "2009-11-23", "accept"),  # 17 today: Mid-Essex 17+
    ("north-essex-mid", "2009-11-24", "signpost"),
    ("north-essex-west", "2012-11-23", "accept"),  # 14 today: West Essex 14+
    ("north-essex-west", "2012-11-24", "signpost"),
    ("north-essex-north-east", "2010-11-23", "accept"),  # 16 today: North East Essex 16+
    ("north-essex-north-east", "2010-11-24", "signpost"),
]


@pytest.mark.parametrize(("service", "born", "outcome"), AGE_ROWS)
def test_age_limit_is_the_localitys_own_TT_01(service: str, born: str, outcome: str) -> None:
    decision = decide(service, born)
    assert decision.outcome == outcome and "TT-01" in decision.rule_ids


STEP_ROWS = [
    # phq-9 band, gad-7 (score, band), outcome, step or route
    ("mild", (7, "mild"), "accept", "step-2"),
    ("moderate", (8, "mild"), "accept", "step-2"),
    ("moderately-severe", (8, "mild"), "accept", "step-3"),
    ("severe", (8, "mild"), "accept", "step-3"),  # severe alone is step 3 (TT-07: secondary care needs poor functioning and high risk)
    ("none-minimal", (2, "minimal"), "signpost", "signpost"),
    ("mild", (14, "moderate"), "accept", "step-2"),  # GAD-7 14: moderate (TT-06 standard cut-offs)
    ("mild", (15, "severe"), "accept", "step-2"),  # GAD-7 15: moderate for stepping (TT-06 b: the service's table, issue 33)
]


@pytest.mark.parametrize(("phq_band", "gad", "outcome", "where"), STEP_ROWS)
def test_step_from_the_worse_of_phq9_and_gad7_TT_05_06_07(phq_band: str, gad: tuple[int, str], outcome: str, where: str) -> None:
    measures: dict[str, tuple[float, str]] = {"phq-9": (PHQ[phq_band], phq_band), "gad-7": gad}
    decision = decide("north-essex-mid", "1990-01-01", measures=measures)
    assert decision.outcome == outcome
    assert (decision.step if outcome == "accept" else decision.route) == where
    assert {"TT-05", "TT-06", "TT-07"} <= set(decision.rule_ids)


def test_without_scores_screening_decides_the_step_TT_07() -> None:
    decision = decide("north-essex-mid", "1990-01-01")
    assert decision.step == "screening" and "tt-initial-assessment" in decision.clocks


EXCLUSION_ROWS = [
    ("recent-suicide-attempt", "1990-01-01", "secondary-care", "TT-04"),
    ("severe-substance-misuse", "1990-01-01", "signpost", "TT-04"),
    ("self-harm-overdose-history", "2009-06-01", "secondary-care", "TT-04"),  # aged 17: excluded
    ("imminent-risk", "1990-01-01", "access-and-assessment", "TT-16"),
    ("current-intent", "1990-01-01", "secondary-care", "TT-07"),
]


@pytest.mark.parametrize(("finding", "born", "route", "rule"), EXCLUSION_ROWS)
def test_exclusions_go_to_a_named_service_and_inform_the_gp_TT_04(finding: str, born: str, route: str, rule: str) -> None:
    decision = decide("north-essex-mid", born, findings=(finding,))
    assert decision.route == route and rule in decision.rule_ids and decision.where


def test_self_harm_history_excludes_only_at_16_or_17_TT_04() -> None:
    decision = decide("north-essex-mid", "1990-01-01", findings=("self-harm-overdose-history",))
    assert decision.outcome == "accept"


def test_imminent_risk_wins_over_every_other_exclusion_TT_16() -> None:
    decision = decide("north-essex-mid", "1990-01-01", findings=("severe-substance-misuse", "imminent-risk"))
    assert decision.route == "access-and-assessment"


def test_urgent_self_referral_goes_to_the_duty_worker_TT_03() -> None:
    urgent = decide("north-essex-mid", "1990-01-01", source="self", gp_contact_agreed=True, priority="urgent")
    assert urgent.duty_screening and "TT-03" in urgent.rule_ids
    assert not decide("north-essex-mid", "1990-01-01", priority="urgent").duty_screening  # a GP's urgent referral: normal screening


def test_a_self_referral_must_record_the_gp_contact_wish_TT_02() -> None:
    body = referral("north-essex-mid", "R-1", RECEIVED, "1990-01-01", source="self")
    with pytest.raises(GatewayInputError) as refused:
        parse_pathway_referral(json.dumps(body).encode())
    first = refused.value.first_error
    assert first is not None
    assert "gp-contact-agreed" in first.element and "TT-02" in first.message


def test_referral_inputs_refused_name_their_element() -> None:
    body = referral("north-essex-mid", "R-1", "2026-11-23T12:00:00", "1990-13-01", responses=(phq9(5), gad7(3)))
    body.pop("performer")
    with pytest.raises(GatewayInputError) as refused:
        parse_pathway_referral(json.dumps(body).encode())
    elements = {p.element for p in refused.value.problems}
    assert {"ServiceRequest.performer", "ServiceRequest.authoredOn"} <= elements
    assert any(e.endswith(".birthDate") for e in elements)


# --- clocks ---------------------------------------------------------------------------------------------


def test_seven_working_days_skip_the_christmas_bank_holidays_PC_07() -> None:
    rules = REGISTRY.services["rdash-rotherham"]
    start = datetime(2026, 12, 24, 10, 0, tzinfo=UTC)  # Thursday; 25 Dec, 28 Dec (Boxing Day substitute) and 1 Jan are holidays
    assert due_time(rules.clocks["pcmhh-screening"], start) == datetime(2027, 1, 8, 0, 0, tzinfo=UTC)  # the end of 7 January


def test_keeping_well_call_is_three_calendar_months_after_step_out_PC_12() -> None:
    rules = REGISTRY.services["rdash-rotherham"]
    assert due_time(rules.clocks["keeping-well-call"], datetime(2026, 11, 30, 12, tzinfo=UTC)) == datetime(2027, 3, 1, 12, tzinfo=UTC)


def test_four_week_clock_stops_only_when_all_three_items_exist_PC_08() -> None:
    t = [datetime(2026, 11, d, 10, tzinfo=UTC) for d in (2, 5, 9)]
    assert pc08_stop_time(Pc08Facts(t[0], t[1], None)) is None
    assert pc08_stop_time(Pc08Facts(None, t[1], t[2])) is None
    assert pc08_stop_time(Pc08Facts(t[0], None, t[2])) is None
    assert pc08_stop_time(Pc08Facts(t[2], t[0], t[1])) == t[2]  # stops when the last one is recorded


# --- the rule files -------------------------------------------------------------------------------------


def test_every_locality_has_its_rule_file_with_a_version() -> None:
    assert set(REGISTRY.services) == {
        "rdash-rotherham",
        "rdash-doncaster",
        "rdash-north-lincolnshire",
        "north-essex-west",
        "north-essex-mid",
        "north-essex-north-east",
    }
    assert all(r.version and r.label.endswith(r.version) for r in REGISTRY.services.values())


def test_a_rule_change_is_a_data_change_TT_01(tmp_path: Path) -> None:
    folder = Path(__file__).resolve().parent.parent / "gateway" / "pathways" / "rules" / "pathways"
    for path in folder.glob("*.yaml"):
        (tmp_path / path.name).write_text(path.read_text())
    mid = tmp_path / "north-essex-mid.yaml"
    mid.write_text(mid.read_text().replace("min_age: {years: 17}", "min_age: {years: 18}").replace('"2026.12.3"', '"2026.12.4"'))
    changed = load_pathways(tmp_path).services["north-essex-mid"]
    body = referral("north-essex-mid", "R-1", RECEIVED, "2009-11-23", practice="F81001")
    decision = route_referral(parse_pathway_referral(json.dumps(body).encode()), changed, {}, False)
    assert decision.outcome == "signpost" and changed.label == "north-essex-mid pathway 2026.12.4"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("clocks"), "clocks"),
        (lambda d: d["exclusions"].pop("under-age"), "under-age"),
        (lambda d: d["session_caps"].update({"step-2": {"standard": 10, "with_supervisor": 7}}), "with_supervisor"),
        (lambda d: d["exclusions"]["severe-anger"].update({"route": "somewhere"}), "route"),
        (lambda d: d["treatment_targets"][0].update({"within": "PT1000H"}), "whole number of days"),  # TT-08
        (lambda d: d["treatment_targets"][1].update({"share": 1.5}), "treatment_targets"),
    ],
)
def test_a_bad_rule_file_stops_loading_naming_the_field(tmp_path: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    folder = Path(__file__).resolve().parent.parent / "gateway" / "pathways" / "rules" / "pathways"
    base = yaml.safe_load((folder / "north-essex.base.yaml").read_text())
    local = yaml.safe_load((folder / "north-essex-mid.yaml").read_text())
    local.pop("extends")
    merged = {**base, **local}
    edit(merged)
    (tmp_path / "north-essex-mid.yaml").write_text(yaml.safe_dump(merged))
    with pytest.raises(RuleFileError) as failed:
        load_pathways(tmp_path)
    assert "north-essex-mid.yaml" in str(failed.value) and message in str(failed.value)


def test_a_primary_care_file_asking_for_more_outcome_measures_than_it_lists_is_refused_PC_14(tmp_path: Path) -> None:
    folder = Path(__file__).resolve().parent.parent / "gateway" / "pathways" / "rules" / "pathways"
    merged = yaml.safe_load((folder / "rdash.base.yaml").read_text()) | yaml.safe_load((folder / "rdash-rotherham.yaml").read_text())
    merged.pop("extends")
    (tmp_path / "rdash-rotherham.yaml").write_text(yaml.safe_dump(merged | {"baseline_measures": ["gbo"]}))
    with pytest.raises(RuleFileError, match="min_outcome_measures"):
        load_pathways(tmp_path)


def test_day_counted_clocks_end_at_the_end_of_the_london_day_across_the_clock_change_TT_08() -> None:
    rules = REGISTRY.services["north-essex-mid"]
    start = datetime(2027, 3, 10, 10, 0, tzinfo=UTC)  # 10:00 GMT; British Summer Time starts on 28 March 2027
    assert due_time(rules.clocks["tt-initial-assessment"], start) == datetime(2027, 4, 7, 23, 0, tzinfo=UTC)  # 00:00 BST, 8 April
