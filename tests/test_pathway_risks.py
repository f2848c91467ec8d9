"""Issue 33 item 9 for pathway referrals over HTTP: a risk answer in a referral that is refused is never lost. The
contained response's risk items raise the Flag, or escalate the patient's open CAS case (CAS-10), all the same, and
the refusal says so (CAS-04)."""

from __future__ import annotations

from typing import Any

from gateway.pathways.demo import gad7, phq9, referral
from tests.conftest import fixture_bytes, issues, task_of
from tests.test_pathway_api import route
from tests.test_questionnaire_api import NHS as CASE_NHS

RECEIVED = "2026-11-20T10:00:00+00:00"


def _refused_by_finding(nhs: str, ref: str = "R-RISK-1", **kw: Any) -> dict[str, Any]:
    """A North Essex referral refused for an unknown finding, carrying a PHQ-9 whose item 9 is answered 3."""
    body = referral("north-essex-mid", ref, RECEIVED, "1990-01-01", nhs_number=nhs, responses=(phq9(20, item9=3), gad7(8)), **kw)
    body["reasonCode"] = [{"coding": [{"system": "https://fhir.iap-gateway.org/CodeSystem/referral-finding", "code": "not-a-finding"}]}]
    return body


def _warnings(reply) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return [(element, text) for severity, element, text in issues(reply.json()) if severity == "warning"]


def test_phq9_item9_in_a_refused_pathway_referral_raises_a_flag_and_the_refusal_says_so_CAS_04(client, stored) -> None:  # type: ignore[no-untyped-def]
    refused = route(client, _refused_by_finding("9990000182"))
    assert refused.status_code == 400, refused.text
    assert [e for s, e, _ in issues(refused.json()) if s == "error"] == ["ServiceRequest.reasonCode"]
    ((element, said),) = _warnings(refused)
    assert element == "ServiceRequest.contained.where(id='phq9').item.where(linkId='44260-8')"
    assert "acted on although this response is refused" in said and "Flag/" in said
    flag_id = said.split("Flag/", 1)[1].split(" ", 1)[0]
    flag = client.get(f"/fhir/Flag/{flag_id}").json()
    assert flag["status"] == "active" and "refused for other reasons" in flag["code"]["text"]
    assert stored().get("ServiceRequest", 0) == 0 and stored().get("EpisodeOfCare", 0) == 0  # the referral itself: nothing
    again = route(client, _refused_by_finding("9990000182"))  # sent again as it was: the Flag is found, not raised twice
    assert again.status_code == 400 and "raised when this response was first sent" in _warnings(again)[0][1]
    assert stored().get("Flag") == 1


def test_a_refused_referral_then_corrected_keeps_one_flag_for_its_risk_answer_CAS_04(client, stored) -> None:  # type: ignore[no-untyped-def]
    assert route(client, _refused_by_finding("9990000182")).status_code == 400
    corrected = referral(
        "north-essex-mid", "R-RISK-1", RECEIVED, "1990-01-01", nhs_number="9990000182", responses=(phq9(20, item9=3), gad7(8))
    )
    assert route(client, corrected).status_code == 201
    assert stored().get("Flag") == 1  # the accepted referral's response has the refused one's id: the same Flag


def test_phq9_item9_in_a_referral_refused_for_its_own_response_escalates_the_open_cas_case_CAS_10(client, stored) -> None:  # type: ignore[no-untyped-def]
    task = task_of(client.post("/ingest/nhs111", content=fixture_bytes("option1-dx12.case.json")).json())
    bad = phq9(20, item9=3)
    bad["item"][2]["answer"] = [{"valueCoding": {"system": "http://loinc.org", "code": "LA6572-7"}}]  # not an answer of item 3
    body = referral("north-essex-mid", "R-RISK-2", RECEIVED, "1990-01-01", nhs_number=CASE_NHS, responses=(bad,))
    before = stored().get("ServiceRequest", 0)  # the 111 case's referral
    refused = route(client, body)
    assert refused.status_code in (400, 422), refused.text
    ((_, said),) = _warnings(refused)
    assert f"Task/{task['id']} (Urgent CN Review, CAS-10)" in said
    escalated = client.get(f"/fhir/Task/{task['id']}").json()
    assert escalated["businessStatus"]["coding"][0]["code"] == "urgent-cn-review"
    assert stored().get("ServiceRequest", 0) == before and stored().get("Flag", 0) == 0 and stored().get("EpisodeOfCare", 0) == 0


def test_a_risk_answer_in_a_referral_with_an_invalid_nhs_number_is_refused_saying_it_was_not_acted_on_CAS_04(client, stored) -> None:  # type: ignore[no-untyped-def]
    refused = route(client, _refused_by_finding("9990000183"))  # wrong check digit
    assert refused.status_code == 400
    ((_, said),) = _warnings(refused)
    assert "NOT acted on" in said and stored().get("Flag", 0) == 0


def test_a_refused_referral_without_a_risk_answer_is_refused_as_before(client, stored) -> None:  # type: ignore[no-untyped-def]
    body = _refused_by_finding("9990000182")
    body["contained"][1] = phq9(12)
    refused = route(client, body)
    assert refused.status_code == 400 and _warnings(refused) == [] and stored().get("Flag", 0) == 0
