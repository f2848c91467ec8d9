"""SystmOne template extract over HTTP: CTV3 contacts (PC-04), measures scored, care plans that count (PC-09)."""

from __future__ import annotations

from fhir_mapping.parameters import from_parameters
from tests.conftest import ROOT
from tests.test_pcmis import rows, to_csv

EXTRACT = ROOT / "fixtures" / "systmone" / "contacts.csv"


def post(client, body: bytes):  # type: ignore[no-untyped-def]
    return client.post("/ingest/systmone", content=body, headers={"Content-Type": "text/csv"})


def _resources(client, refs: list[str], rtype: str) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    from sqlalchemy import select

    from gateway.platform.store.models import ResourceRow

    ids = [r.split("/")[1] for r in refs if r.startswith(rtype + "/")]
    with client.app.state.sessions() as session:
        import json

        rows_ = session.execute(select(ResourceRow.content).where(ResourceRow.resource_type == rtype, ResourceRow.id.in_(ids))).scalars()
        return [json.loads(c) for c in rows_]


def test_contacts_are_ctv3_coded_and_an_unknown_code_is_refused_by_row_PC_04(client) -> None:
    """PC-04: initial contact XaL0u, follow-up XaZrH; anything else is refused, the other rows still land."""
    reply = post(client, EXTRACT.read_bytes()).json()
    assert [r["outcome"] for r in reply["rows"]] == ["accepted", "accepted", "refused"]
    assert (
        reply["rows"][2]["issues"][0]["expression"] == ["row[3].contact_code"] and "XaAAA" in reply["rows"][2]["issues"][0]["diagnostics"]
    )
    (first,) = _resources(client, reply["rows"][0]["resources"], "Encounter")
    assert first["type"][0]["coding"][0] == {"system": "http://read.info/ctv3", "code": "XaL0u", "display": "Initial contact"}


def test_first_contact_without_a_complete_phq9_or_gad7_and_dialog_is_accepted_with_a_warning_PC_04(client) -> None:
    """PC-04: first contact: PHQ-9 or GAD-7, and DIALOG, completed in full (a warning, the contact still counts)."""
    records = rows(EXTRACT.read_text())[:1]
    records[0]["dialog_11"] = ""
    reply = post(client, to_csv(records)).json()
    assert reply["rows"][0]["outcome"] == "accepted"
    assert reply["rows"][0]["issues"][0]["severity"] == "warning" and "PC-04" in reply["rows"][0]["issues"][0]["diagnostics"]


def test_a_care_plan_counts_only_with_its_agreement_PC_09(client) -> None:
    """PC-09: MHS008 alone is a draft; MHS008 + MHS009 is the active care plan; the safety plan is its own."""
    reply = post(client, EXTRACT.read_bytes()).json()
    (draft,) = _resources(client, reply["rows"][0]["resources"], "CarePlan")
    assert draft["status"] == "draft" and "PC-09" in draft["note"][0]["text"]
    plans = {p["category"][0]["coding"][0]["code"]: p for p in _resources(client, reply["rows"][1]["resources"], "CarePlan")}
    assert plans["dialog-plus"]["status"] == "active" and plans["safety-plan"]["status"] == "active"


def test_dialog_improvement_is_paired_across_systmone_contacts_PC_11(client) -> None:
    """PC-11 on SystmOne data: DIALOG subjective quality of life up by >= 0.25 between the two contacts."""
    post(client, EXTRACT.read_bytes())
    patient = client.get("/fhir/Patient", params={"identifier": "https://fhir.nhs.uk/Id/nhs-number|9990000166"}).json()["entry"][0][
        "resource"
    ]
    summary = from_parameters(client.get(f"/fhir/Patient/{patient['id']}/$outcome-summary").json())
    sqol = summary["measures"]["dialog"]["scores"]["sqol-mean"]
    assert (sqol["first"]["value"], sqol["latest"]["value"], sqol["improvement"]) == (3.75, 4.25, True)
    assert summary["measures"]["gbo"]["scores"]["goal-2"]["change"] == 4
    assert summary["measures"]["reqol-10"]["scores"]["total"]["count"] == 2


def test_a_resent_extract_changes_nothing(client, stored) -> None:
    post(client, EXTRACT.read_bytes())
    before = stored()
    again = post(client, EXTRACT.read_bytes()).json()
    assert again["duplicate"] == 2 and again["refused"] == 1 and stored() == before


def test_a_contact_changed_since_first_received_is_a_conflict_and_changes_nothing(client, stored) -> None:
    post(client, EXTRACT.read_bytes())
    before = stored()
    first = rows(EXTRACT.read_text())[0]
    assert first["contact_code"] == "XaL0u"
    reply = post(client, to_csv([first | {"contact_code": "XaZrH"}])).json()  # re-exported as a follow-up
    assert reply["conflict"] == 1 and [i["expression"] for i in reply["rows"][0]["issues"]] == [["row[1].contact_code"]]
    assert stored() == before


def test_a_gbo_with_two_of_three_goals_is_a_completed_response_PC_14(client) -> None:
    """PC-14: up to 3 goals; goal 3 not given, so its rating is not enabled and not missing (enableWhen)."""
    reply = post(client, EXTRACT.read_bytes()).json()
    responses = _resources(client, reply["rows"][0]["resources"], "QuestionnaireResponse")
    (gbo,) = [r for r in responses if r["questionnaire"].startswith("https://fhir.iap-gateway.org/Questionnaire/gbo|")]
    assert gbo["status"] == "completed"
