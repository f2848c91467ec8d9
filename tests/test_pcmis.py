"""PCMIS contact batches over HTTP: every row's outcome, measures scored, the TT-11 data set, consents."""

from __future__ import annotations

import csv
import io
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.pcmis import parse_pcmis_csv
from adapters.problems import GatewayInputError
from fhir_mapping.parameters import from_parameters
from tests.conftest import ROOT

CONTACTS = ROOT / "fixtures" / "pcmis" / "contacts.csv"


def post(client, body: bytes):  # type: ignore[no-untyped-def]
    return client.post("/ingest/pcmis", content=body, headers={"Content-Type": "text/csv"})


def rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def to_csv(records: list[dict[str, str]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(records[0]))
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue().encode()


def test_a_batch_stores_each_contact_with_its_measures_and_the_paired_outcome_TT_11(client) -> None:
    """TT-11: PHQ-9, GAD-7, phobia scales, WSAS and employment status at each contact, paired over time."""
    reply = post(client, CONTACTS.read_bytes()).json()
    assert (reply["accepted"], reply["refused"], reply["duplicate"]) == (3, 0, 0)
    patient = client.get("/fhir/Patient", params={"identifier": "https://fhir.nhs.uk/Id/nhs-number|9990000158"}).json()["entry"][0][
        "resource"
    ]
    summary = from_parameters(client.get(f"/fhir/Patient/{patient['id']}/$outcome-summary").json())
    phq = summary["measures"]["phq-9"]["scores"]["total"]
    assert (phq["first"]["value"], phq["latest"]["value"], phq["reliable_improvement"]) == (13, 4, True)
    assert summary["measures"]["wsas"]["scores"]["total"]["first"]["value"] == 14  # work N/A: four items
    assert summary["minimum_data_set"]["contacts"] == 2 and summary["minimum_data_set"]["complete"] == 2
    assert summary["talking_therapies"]["recovery"] is True


def test_a_dna_contact_is_a_cancelled_encounter_and_consents_are_recorded_TT_15(client) -> None:
    """TT-15 contact consents and the self-referred client's wish that the GP is not contacted (TT-02, TT-14)."""
    reply = post(client, CONTACTS.read_bytes()).json()
    third = reply["rows"][2]["resources"]
    encounter = client.get(f"/fhir/{next(r for r in third if r.startswith('Encounter/'))}").json()
    assert encounter["status"] == "cancelled" and encounter["type"][1]["coding"][0]["code"] == "dna"
    consent_ref = next(r for r in reply["rows"][0]["resources"] if r.startswith("Consent/"))
    from sqlalchemy import select

    from gateway.platform.store.models import ResourceRow

    with client.app.state.sessions() as session:
        consent = session.execute(select(ResourceRow.content).where(ResourceRow.id == consent_ref.split("/")[1])).scalar_one()
    provisions = {p["action"][0]["text"]: p["type"] for p in json.loads(consent)["provision"]["provision"]}
    assert provisions == {
        "contact by email": "permit",
        "contact by home, mobile or work phone": "permit",
        "leave voicemail": "deny",
        "contact by SMS": "permit",
        "contact the GP practice": "deny",
    }


def test_a_bad_row_is_reported_and_the_good_rows_still_land(client, stored) -> None:
    records = rows(CONTACTS.read_text())
    records[1]["contact_time"] = "2026-11-16 10:00"  # a bad date
    records[2]["phq9_3"] = "7"  # out of range
    reply = post(client, to_csv(records)).json()
    assert [r["outcome"] for r in reply["rows"]] == ["accepted", "refused", "refused"]
    assert reply["rows"][1]["issues"][0]["expression"] == ["row[2].contact_time"]
    assert reply["rows"][2]["issues"][0]["expression"] == ["row[3].phq9_3"]
    assert stored()["Encounter"] == 1


def test_a_resent_batch_changes_nothing(client, stored) -> None:
    post(client, CONTACTS.read_bytes())
    before = stored()
    again = post(client, CONTACTS.read_bytes()).json()
    assert again["duplicate"] == 3 and stored() == before


def test_a_contact_changed_since_first_received_is_a_conflict_naming_the_columns_and_the_first_stands(client, stored) -> None:
    records = rows(CONTACTS.read_text())
    post(client, to_csv(records))
    before = stored()
    encounter = client.get("/fhir/Encounter", params={"patient": _patient_id(client, records[0]["nhs_number"])}).json()
    records[0] |= {"attendance": "dna", "phq9_1": "3"}  # the therapist corrected the record after the first export
    records[1] |= {"therapist": f"  {records[1]['therapist']}  "}  # only padded: the same row
    reply = post(client, to_csv(records)).json()
    assert [r["outcome"] for r in reply["rows"]] == ["conflict", "duplicate", "duplicate"]
    assert (reply["conflict"], reply["duplicate"], reply["accepted"]) == (1, 2, 0)
    conflict = reply["rows"][0]["issues"]
    assert [(i["code"], i["expression"]) for i in conflict] == [("conflict", ["row[1].attendance"]), ("conflict", ["row[1].phq9_1"])]
    assert "as first received, which stands" in conflict[0]["diagnostics"]
    assert stored() == before
    assert client.get("/fhir/Encounter", params={"patient": _patient_id(client, records[0]["nhs_number"])}).json() == encounter


def _patient_id(client, nhs: str) -> str:  # type: ignore[no-untyped-def]
    found = client.get("/fhir/Patient", params={"identifier": f"https://fhir.nhs.uk/Id/nhs-number|{nhs}"}).json()
    return str(found["entry"][0]["resource"]["id"])


def test_a_file_with_a_missing_column_is_refused_whole(client, stored) -> None:
    records = [{k: v for k, v in r.items() if k != "wsas_3"} for r in rows(CONTACTS.read_text())]
    response = post(client, to_csv(records))
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["column:wsas_3"]
    assert stored() == {"InboundMessage": 0}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.binary(max_size=400)
    | st.integers(0, 3000).flatmap(
        lambda cut: st.binary(max_size=30).map(lambda junk: CONTACTS.read_bytes()[:cut] + junk + CONTACTS.read_bytes()[cut:])
    )
)
def test_pcmis_parser_never_fails_except_with_a_clear_refusal(data: bytes) -> None:
    try:
        parse_pcmis_csv(data)
    except GatewayInputError as error:
        assert error.problems


SYSTMONE = ROOT / "fixtures" / "systmone" / "contacts.csv"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.binary(max_size=400)
    | st.integers(0, 3000).flatmap(
        lambda cut: st.binary(max_size=30).map(lambda junk: SYSTMONE.read_bytes()[:cut] + junk + SYSTMONE.read_bytes()[cut:])
    )
)
def test_systmone_parser_never_fails_except_with_a_clear_refusal(data: bytes) -> None:
    from adapters.systmone import parse_systmone_csv

    try:
        parse_systmone_csv(data)
    except GatewayInputError as error:
        assert error.problems
