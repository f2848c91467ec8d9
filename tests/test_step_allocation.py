"""Step allocation by the service's own GAD-7 bands (TT-06 (b), TT-07; issue 33), over HTTP ($route)."""

from __future__ import annotations

import pytest

from gateway.pathways.demo import gad7, phq9, referral, wsas
from tests.test_pathway_api import param, route


def _route_gad7(client, score: int):  # type: ignore[no-untyped-def]
    body = referral("north-essex-mid", f"R-GAD-{score}", "2026-11-20T10:00:00+00:00", "1990-01-01", responses=(phq9(2), gad7(score)))
    reply = route(client, body)
    assert reply.status_code == 201, reply.text
    return reply.json()


def _reasons(reply) -> str:  # type: ignore[no-untyped-def]
    return " ".join(str(p.get("valueString", "")) for p in reply["parameter"] if p["name"] == "reason")


@pytest.mark.parametrize(
    ("score", "severity", "published"),
    [(10, "mild", "moderate"), (11, "moderate", "moderate"), (15, "moderate", "severe")],
)
def test_gad7_10_11_and_15_step_by_the_services_own_bands_TT_06_TT_07(client, score: int, severity: str, published: str) -> None:  # type: ignore[no-untyped-def]
    """TT-06 (b): 5-10 mild, 11-15 moderate (15 read as moderate): step 2; the published band is named beside it."""
    reply = _route_gad7(client, score)
    assert param(reply, "outcome") == "accept" and param(reply, "step") == "step-2"
    assert f"GAD-7 {score}: stepping severity {severity} (stepping_bands.gad-7; published band {published})" in _reasons(reply)


def test_gad7_16_is_severe_for_stepping_TT_06(client) -> None:  # type: ignore[no-untyped-def]
    """TT-06 (b): 16-21 severe in the service's table."""
    reply = _route_gad7(client, 16)
    assert "GAD-7 16: stepping severity severe (stepping_bands.gad-7; published band severe)" in _reasons(reply)


# --- TT-07: the step table's three columns (severity, functioning, risk) ----------------------------------------------

NE_NHS = "9990000174"  # referral()'s default patient


def _route(client, ref: str, *responses, **kw):  # type: ignore[no-untyped-def]
    body = referral("north-essex-mid", ref, "2026-11-20T10:00:00+00:00", "1990-01-01", responses=responses, **kw)
    reply = route(client, body)
    assert reply.status_code == 201, reply.text
    return reply.json()


def _decided_by(reply) -> list[str]:  # type: ignore[no-untyped-def]
    return [p["valueCode"] for p in reply["parameter"] if p["name"] == "decided-by"]


def _tasks(client, reply) -> dict[str, dict]:  # type: ignore[no-untyped-def,type-arg]
    refs = [p["valueReference"]["reference"] for p in reply["parameter"] if p["name"] == "task"]
    tasks = [client.get(f"/fhir/{ref}").json() for ref in refs]
    return {t["code"]["coding"][0]["code"]: t for t in tasks}


def _explained(client, reply) -> str:  # type: ignore[no-untyped-def]
    ref = param(reply, "referral")["reference"]
    return " ".join(p["valueString"] for p in client.get(f"/fhir/{ref}/$explain").json()["parameter"] if p["name"] == "step")


def test_gad7_16_alone_is_step_3_with_a_senior_clinician_screening_never_a_redirect_TT_06_TT_07(client) -> None:  # type: ignore[no-untyped-def]
    reply = _route_gad7(client, 16)
    assert param(reply, "outcome") == "accept" and param(reply, "step") == "step-3"
    assert "senior-screening" in _tasks(client, reply)
    assert param(reply, "functioning").startswith("unknown") and param(reply, "risk").startswith("unknown")


def test_gad7_15_with_poor_functioning_and_high_risk_is_not_secondary_care_TT_06_TT_07(client) -> None:  # type: ignore[no-untyped-def]
    """15 is moderate for stepping: the step 4/5 row is for severe only; moderate with poor functioning is step 3."""
    reply = _route(client, "R-G15-POOR", phq9(2), gad7(15), functioning="poor", risk="high")
    assert param(reply, "outcome") == "accept" and param(reply, "step") == "step-3"
    assert _decided_by(reply) == ["severity", "functioning"] and "senior-screening" not in _tasks(client, reply)


def test_gad7_11_moderate_with_impeded_functioning_is_step_3_and_unaffected_is_step_2_TT_07(client) -> None:  # type: ignore[no-untyped-def]
    impeded = _route(client, "R-G11-IMP", phq9(2), gad7(11), functioning="impeded")
    unaffected = _route(client, "R-G11-OK", phq9(2), gad7(11), functioning="relatively-unaffected", nhs_number="9990000182")
    assert param(impeded, "step") == "step-3" and _decided_by(impeded) == ["severity", "functioning"]
    assert param(unaffected, "step") == "step-2" and _decided_by(unaffected) == ["severity", "functioning"]


def test_phq9_19_with_poor_functioning_and_high_risk_is_step_3_TT_05_TT_07(client) -> None:  # type: ignore[no-untyped-def]
    reply = _route(client, "R-P19", phq9(19), gad7(2), wsas(30), risk="high")
    assert param(reply, "outcome") == "accept" and param(reply, "step") == "step-3"
    assert _decided_by(reply) == ["severity"] and "senior-screening" not in _tasks(client, reply)


def test_phq9_20_with_poor_functioning_and_high_risk_is_secondary_care_named_in_explain_TT_05_TT_07(client) -> None:  # type: ignore[no-untyped-def]
    reply = _route(client, "R-P20-SEC", phq9(20), gad7(2), wsas(21), risk="high")
    assert param(reply, "outcome") == "redirect" and param(reply, "route") == "secondary-care"
    assert _decided_by(reply) == ["severity", "functioning", "risk"]
    assert param(reply, "functioning") == "poor (WSAS 21 in the referral, functioning_bands)"
    explained = _explained(client, reply)
    assert "route-referral (TT-01, TT-02, TT-05, TT-06, TT-07" in explained and "rules/north-essex-mid/2026.12.3" in explained
    assert "severity severe (the worse of PHQ-9 and GAD-7: PHQ-9 20)" in explained
    assert "step_allocation row 7 (severe + functioning poor + risk high -> secondary-care) applies" in explained
    assert "decided by severity, functioning, risk" in explained


def test_phq9_20_with_poor_functioning_and_low_risk_is_step_3_decided_by_risk_TT_07(client) -> None:  # type: ignore[no-untyped-def]
    reply = _route(client, "R-P20-LOW", phq9(20), gad7(2), wsas(21), risk="low")
    assert param(reply, "step") == "step-3" and _decided_by(reply) == ["severity", "risk"]
    assert "senior-screening" not in _tasks(client, reply)


def test_phq9_20_with_wsas_20_and_high_risk_is_step_3_decided_by_functioning_TT_07(client) -> None:  # type: ignore[no-untyped-def]
    """WSAS 20 is the top of the impeded band (functioning_bands, Mundt 2002: 10-20)."""
    reply = _route(client, "R-P20-W20", phq9(20), gad7(2), wsas(20), risk="high")
    assert param(reply, "step") == "step-3" and _decided_by(reply) == ["severity", "functioning"]


@pytest.mark.parametrize(
    ("stated", "unknown"), [({}, "functioning, risk"), ({"risk": "high"}, "functioning"), ({"functioning": "poor"}, "risk")]
)
def test_phq9_20_with_functioning_or_risk_unknown_is_step_3_and_a_senior_screening_task_TT_07(client, stated, unknown) -> None:  # type: ignore[no-untyped-def]
    reply = _route(client, "R-P20-UNK", phq9(20), gad7(2), **stated)
    assert param(reply, "outcome") == "accept" and param(reply, "step") == "step-3"
    task = _tasks(client, reply)["senior-screening"]
    assert task["reasonCode"]["coding"][0]["code"] == "TT-07" and task["owner"]["display"].startswith("Mid-Essex step 3")
    assert f"with {unknown.replace(', ', ' and ')} unknown" in task["description"]
    assert f"cannot be decided: {unknown} unknown; a senior clinician screens the referral (if_unknown: senior-screening)" in _reasons(
        reply
    )
    assert "TT-07" in _explained(client, reply)


def test_a_wsas_on_file_gives_the_functioning_column_named_by_its_observation_TT_07(client) -> None:  # type: ignore[no-untyped-def]
    on_file = wsas(32, authored="2026-11-10T09:00:00+00:00") | {
        "subject": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": NE_NHS}}
    }
    on_file.pop("id")
    assert client.post("/fhir/QuestionnaireResponse", json=on_file).status_code == 201
    reply = _route(client, "R-P20-FILE", phq9(20), gad7(2), risk="high")
    assert param(reply, "outcome") == "redirect" and _decided_by(reply) == ["severity", "functioning", "risk"]
    assert param(reply, "functioning").startswith("poor (WSAS 32 on file, Observation/")
    assert "of 2026-11-10, functioning_bands)" in param(reply, "functioning")


def test_a_wsas_on_file_older_than_the_rule_files_window_is_not_read_TT_07(client) -> None:  # type: ignore[no-untyped-def]
    old = wsas(32, authored="2026-08-01T09:00:00+00:00") | {  # more than functioning_on_file_within (P91D) before the referral
        "subject": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": NE_NHS}}
    }
    old.pop("id")
    assert client.post("/fhir/QuestionnaireResponse", json=old).status_code == 201
    reply = _route(client, "R-P20-OLD", phq9(20), gad7(2), risk="high")
    assert param(reply, "step") == "step-3" and "senior-screening" in _tasks(client, reply)


def test_a_statement_of_functioning_outside_the_code_list_is_refused_naming_it_TT_07(client) -> None:  # type: ignore[no-untyped-def]
    body = referral("north-essex-mid", "R-BAD-F", "2026-11-20T10:00:00+00:00", "1990-01-01", responses=(phq9(20),), functioning="awful")
    reply = route(client, body)
    assert reply.status_code == 400, reply.text
    assert "referral-functioning" in reply.text
