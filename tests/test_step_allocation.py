"""Step allocation by the service's own GAD-7 bands (TT-06 (b), TT-07; issue 33), over HTTP ($route)."""

from __future__ import annotations

import pytest

from gateway.pathway_demo import gad7, phq9, referral
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
