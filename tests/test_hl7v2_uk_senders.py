"""HL7 v2 as UK PAS/EPR senders send it (issue 32, inbound): the fixtures/uk-hl7v2 corpus, NHS number placements,
local numbers and linking, offset-less Europe/London times, updates for unknown patients, escape sequences."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from sqlalchemy import select

from gateway.platform.store.models import InboundMessage
from tests.conftest import ROOT

UK = ROOT / "fixtures" / "uk-hl7v2"
NHS = "https://fhir.nhs.uk/Id/nhs-number"
RIO_LOCAL = "https://fhir.awp.nhs.uk/Id/rio-client-id"
PID32_VERIFIED = "|" * 24 + "01"  # after PID-8: NHS Number Status Indicator 01 (number present and verified)
STATUS_EXT = "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus"


def post(client: Any, body: bytes) -> tuple[str, str]:
    """POST one message; (MSA-1, the whole ACK)."""
    response = client.post("/ingest/hl7v2", content=body, headers={"Content-Type": "x-application/hl7-v2+er7"})
    assert response.status_code == 200
    return response.headers["x-hl7-ack-code"], response.text


def patients(client: Any, identifier: str) -> list[dict[str, Any]]:
    bundle = client.get("/fhir/Patient", params={"identifier": identifier}).json()
    return [e["resource"] for e in bundle.get("entry", [])]


def every_patient(app: Any) -> list[str]:
    from gateway.platform.store.models import ResourceRow

    with app.state.sessions() as session:
        return list(session.execute(select(ResourceRow.id).where(ResourceRow.resource_type == "Patient")).scalars())


def notes_of(client: Any, patient_id: str) -> list[dict[str, Any]]:
    bundle = client.get("/fhir/DocumentReference", params={"patient": patient_id}).json()
    return [e["resource"] for e in bundle.get("entry", [])]


def text_of(document: dict[str, Any]) -> str:
    return base64.b64decode(document["content"][0]["attachment"]["data"]).decode()


def adt(trigger: str, control_id: str, pid3: str, name: str = "Linked^Sam", extra: str = "") -> bytes:
    return (
        f"MSH|^~\\&|RIO|RVN|IAPGW|IAP|20260701100000||ADT^{trigger}^ADT_A01|{control_id}|P|2.4\r"
        f"EVN|{trigger}|20260701100000\rPID|1||{pid3}||{name}||19900101|F{extra}\r"
    ).encode()


def oru(control_id: str, pid3: str, text: str) -> bytes:
    return (
        f"MSH|^~\\&|RIO|RVN|IAPGW|IAP|20260701110000||ORU^R01|{control_id}|P|2.4\r"
        f"PID|1||{pid3}||Linked^Sam||19900101|F\rOBR|1|O-{control_id}|N-{control_id}|11488-4^Consultation note^LN\r"
        f"OBX|1|TX|11488-4^Consultation note^LN||{text}||||||F\r"
    ).encode()


@pytest.mark.parametrize("name", sorted(p.stem for p in UK.glob("*.hl7")))
def test_every_uk_shaped_message_is_acked_AA_and_stored_as_sent(client, name: str) -> None:  # type: ignore[no-untyped-def]
    expected = json.loads((UK / f"{name}.expected.json").read_text(encoding="utf-8"))
    sent = (UK / f"{name}.hl7").read_bytes()
    code, ack = post(client, sent)
    assert code == "AA", ack
    assert ack.split("\r")[0].split("|")[11] == sent.splitlines()[0].split(b"|")[11].decode()  # the ACK in the message's version
    (patient,) = patients(client, expected["find"])
    assert patient["name"][0]["family"] == expected["family"] and patient["name"][0]["given"] == expected["given"]
    assert patient["birthDate"] == expected["birthDate"]
    if "identifiers" in expected:
        assert [f"{i['system']}|{i['value']}" for i in patient["identifier"]] == expected["identifiers"]
    if "nhs_status" in expected:
        (extension,) = patient["identifier"][0]["extension"]
        assert extension["url"] == STATUS_EXT and extension["valueCodeableConcept"]["coding"][0]["code"] == expected["nhs_status"]
    documents = notes_of(client, patient["id"])
    assert sorted(text_of(d) for d in documents) == sorted(expected.get("notes", []))
    if "note_date" in expected:
        assert [d["date"] for d in documents] == [expected["note_date"]]


def test_a_time_in_the_repeated_autumn_hour_is_read_as_the_first_and_a_warning_kept(client, app) -> None:  # type: ignore[no-untyped-def]
    assert post(client, (UK / "pas-a04-autumn-repeated-hour.hl7").read_bytes())[0] == "AA"
    with app.state.sessions() as session:
        unused = json.loads(session.execute(select(InboundMessage.unused)).scalars().one())
    assert unused == ["MSH-7: local time in the hour the clocks repeat; read as the first (summer time)"]


def test_an_offsetless_time_in_the_hour_skipped_in_spring_is_AE_naming_the_field(client, stored) -> None:  # type: ignore[no-untyped-def]
    before = stored()
    code, ack = post(client, oru("SPRING-1", "9990000557^^^NHS^NH", "note").replace(b"|20260701110000|", b"|20260329013000|"))
    assert code == "AE" and "ERR|MSH^1^7^102&" in ack and stored() == before


@pytest.mark.parametrize(
    "pid3",
    ["9990000565^^^^NHS", "9990000565^^^NHS", "9990000565^^^nhs^PI", "9990000565^^^&2.16.840.1.113883.2.1.4.1&ISO", "9990000565^^^XX^NH"],
    ids=["type-NHS", "authority-NHS", "authority-lower-case", "authority-OID", "type-NH"],
)
def test_the_nhs_number_is_read_from_every_usual_pid3_placement_and_its_check_digit_checked(client, stored, pid3: str) -> None:  # type: ignore[no-untyped-def]
    before = stored()
    code, ack = post(client, adt("A04", "BAD-CHECK", pid3.replace("9990000565", "9990000566")))
    assert code == "AE" and "ERR|PID^1^3^102&" in ack and stored() == before
    assert post(client, adt("A04", "GOOD-CHECK", pid3))[0] == "AA"
    assert len(patients(client, f"{NHS}|9990000565")) == 1


def test_a_patient_known_by_a_local_number_then_by_both_is_one_patient_with_its_notes(client, app) -> None:  # type: ignore[no-untyped-def]
    local = "RV7000001^^^RVN^PI"
    assert post(client, adt("A04", "LINK-1", local))[0] == "AA"
    (first,) = patients(client, f"{RIO_LOCAL}|RV7000001")
    assert post(client, oru("LINK-2", local, "Before the trace"))[0] == "AA"
    assert post(client, adt("A08", "LINK-3", f"9990000573^^^NHS^NH~{local}", extra=PID32_VERIFIED))[0] == "AA"
    assert post(client, oru("LINK-4", "9990000573^^^NHS^NH", "After the trace"))[0] == "AA"  # the NHS number alone
    assert every_patient(app) == [first["id"]]
    (linked,) = patients(client, f"{NHS}|9990000573")
    assert linked["id"] == first["id"] and patients(client, f"{RIO_LOCAL}|RV7000001") == [linked]
    assert [(i["system"], i["value"]) for i in linked["identifier"]] == [(NHS, "9990000573"), (RIO_LOCAL, "RV7000001")]
    assert linked["identifier"][0]["extension"][0]["url"] == STATUS_EXT
    assert sorted(text_of(d) for d in notes_of(client, first["id"])) == ["After the trace", "Before the trace"]


def test_identifiers_naming_two_different_patients_are_refused_not_merged(client, stored) -> None:  # type: ignore[no-untyped-def]
    assert post(client, adt("A04", "TWO-1", "RV7000002^^^RVN^PI"))[0] == "AA"
    assert post(client, adt("A04", "TWO-2", "9990000581^^^NHS^NH"))[0] == "AA"
    before = stored()
    code, ack = post(client, adt("A08", "TWO-3", "9990000581^^^NHS^NH~RV7000002^^^RVN^PI"))
    assert code == "AE" and "ERR|PID^1^3^205&" in ack and stored() == before


def test_an_update_about_an_unknown_patient_creates_it_and_a_registration_of_a_known_one_updates_it(client) -> None:  # type: ignore[no-untyped-def]
    assert post(client, adt("A31", "UPD-1", "9990000603^^^NHS^NH", name="Created^ByUpdate"))[0] == "AA"
    (created,) = patients(client, f"{NHS}|9990000603")
    assert created["name"][0]["family"] == "Created"
    assert post(client, adt("A28", "UPD-2", "9990000603^^^NHS^NH", name="Renamed^ByRegistration"))[0] == "AA"
    (updated,) = patients(client, f"{NHS}|9990000603")
    assert updated["id"] == created["id"] and updated["name"][0]["family"] == "Renamed" and updated["meta"]["versionId"] == "2"


def test_a_message_type_the_senders_profile_does_not_allow_is_AR(client, app, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from gateway.epr.rules.sender_schema import load_senders

    (tmp_path / "pas-only.yaml").write_text("id: pas-only\nname: ADT only\nmatch: {sending_facility: [RVN]}\nmessage_types: [ADT^A04]\n")
    app.state.hl7.senders = load_senders(tmp_path)
    assert post(client, adt("A04", "TYPE-1", "9990000611^^^NHS^NH"))[0] == "AA"
    code, ack = post(client, oru("TYPE-2", "9990000611^^^NHS^NH", "not from this sender"))
    assert code == "AR" and "ERR|MSH^1^9^200&" in ack


def test_a_later_111_case_keeps_the_local_number_a_sender_linked_so_its_notes_still_find_the_patient(client) -> None:  # type: ignore[no-untyped-def]
    case = json.loads((ROOT / "fixtures" / "nhs111" / "option1-dx12.case.json").read_text())  # 9990000042
    assert client.post("/ingest/nhs111", content=json.dumps(case)).status_code == 201
    assert post(client, adt("A08", "KEEP-1", "9990000042^^^NHS^NH~RV7000003^^^RVN^PI", extra=PID32_VERIFIED))[0] == "AA"
    case["case_id"] += "-again"
    assert client.post("/ingest/nhs111", content=json.dumps(case)).status_code == 201  # the same patient, a new case
    (patient,) = patients(client, f"{NHS}|9990000042")
    assert patients(client, f"{RIO_LOCAL}|RV7000003") == [patient]
    assert patient["identifier"][0]["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] == "01"
    assert post(client, oru("KEEP-2", "RV7000003^^^RVN^PI", "Note under the local number"))[0] == "AA"
    assert [text_of(d) for d in notes_of(client, patient["id"])] == ["Note under the local number"]


def test_a_111_case_and_a_measure_for_a_patient_an_epr_registered_by_local_number_join_that_patient(client) -> None:  # type: ignore[no-untyped-def]
    """RiO registers a patient by its local number, then links the NHS number; a 111 referral and a measure sent by the
    NHS number alone find that Patient: one Patient, never a second (the referral was a 500 before: an NHS number held)."""
    assert post(client, adt("A04", "JOIN-1", "RV7000009^^^RVN^PI"))[0] == "AA"
    assert post(client, adt("A08", "JOIN-2", "9990000042^^^NHS^NH~RV7000009^^^RVN^PI", extra=PID32_VERIFIED))[0] == "AA"
    (registered,) = patients(client, f"{RIO_LOCAL}|RV7000009")
    case = client.post("/ingest/nhs111", content=(ROOT / "fixtures" / "nhs111" / "option1-dx12.case.json").read_bytes())
    assert case.status_code == 201, case.text
    task = next(e["resource"] for e in case.json()["entry"] if e["resource"]["resourceType"] == "Task")
    assert task["for"]["reference"] == f"Patient/{registered['id']}"
    measure = (ROOT / "fixtures" / "measures" / "phq-9-lhc-forms.qr.json").read_bytes()  # by NHS number 9990000042
    assert client.post("/fhir/QuestionnaireResponse", content=measure).status_code == 201
    (patient,) = patients(client, f"{NHS}|9990000042")
    assert patient["id"] == registered["id"] and patients(client, f"{RIO_LOCAL}|RV7000009") == [patient]
    assert {i["system"] for i in patient["identifier"]} == {NHS, RIO_LOCAL}
    assert client.get("/fhir/Patient", params={"_summary": "count", "_lastUpdated": "ge2000-01-01"}).json()["total"] == 1


def test_a_pathway_referral_for_a_patient_an_epr_registered_by_local_number_joins_that_patient(client) -> None:  # type: ignore[no-untyped-def]
    assert post(client, adt("A04", "JOIN-P1", "RV7000010^^^RVN^PI"))[0] == "AA"  # known by the local number first
    assert post(client, adt("A08", "JOIN-P2", "9990000182^^^NHS^NH~RV7000010^^^RVN^PI", extra=PID32_VERIFIED))[0] == "AA"
    (registered,) = patients(client, f"{NHS}|9990000182")
    referral = (ROOT / "fixtures" / "pathways" / "tt-gp-referral-step-3.servicerequest.json").read_bytes()  # 9990000182
    routed = client.post("/fhir/ServiceRequest/$route", content=referral)
    assert routed.status_code == 201, routed.text
    (patient,) = patients(client, f"{NHS}|9990000182")
    assert patient["id"] == registered["id"] and patients(client, f"{RIO_LOCAL}|RV7000010") == [patient]
    episode = client.get(routed.headers["location"]).json()
    assert episode["patient"]["reference"] == f"Patient/{registered['id']}"
