"""Letters over MESH to NHS England's mesh-sandbox (a real MESH peer in its own venv): acceptance for issue 7."""

from __future__ import annotations

import io
import json
from typing import Any, TypeVar, cast

import pytest
from fhir.resources.STU3.binary import Binary as Stu3Binary
from fhir.resources.STU3.bundle import Bundle as Stu3Bundle
from fhir.resources.STU3.composition import Composition as Stu3Composition
from fhir.resources.STU3.messageheader import MessageHeader as Stu3MessageHeader
from fhir.resources.STU3.resource import Resource as Stu3Resource
from pypdf import PdfReader

from fhir_mapping.letters.itk3 import ITK_RESPONSE_CODES
from tests.conftest import GPPROVIDER_TESTPATIENT, free_port
from tests.letter_helpers import NOTES, completed_case, fhir_validate, letter_request, make_deliverer, outbox, pcmis_contacts, write_routing
from tests.mesh_sandbox import GATEWAY_MAILBOX, PASSWORD, PRACTICE_MAILBOX, SHARED_KEY

R = TypeVar("R", bound=Stu3Resource)


def entry_resource(bundle: Stu3Bundle, index: int, kind: type[R]) -> R:
    """The resource in the bundle's entry `index`, which must be a `kind`."""
    assert bundle.entry is not None
    resource = bundle.entry[index].resource
    assert isinstance(resource, kind), resource
    return resource


def mesh_worker(app, clock, mesh, tmp_path, url: str | None = None, **routing: Any):  # type: ignore[no-untyped-def]
    routing.setdefault("mesh_mailboxes", {"L81001": PRACTICE_MAILBOX})
    return make_deliverer(
        app,
        clock,
        routing_file=write_routing(tmp_path, **routing),
        mesh_url=url or mesh.url,
        mesh_mailbox=GATEWAY_MAILBOX,
        mesh_password=PASSWORD,
        mesh_shared_key=SHARED_KEY,
        mesh_timeout_seconds=10.0,
        outbox_backoff_seconds=5.0,
    )


def itk_ack(header_id: str, code: str, itk_code: str, display: str) -> bytes:
    """What the GP system sends back: an ITK3 response (ITK008M) quoting our MessageHeader id, as STU3 XML."""
    ack = {
        "resourceType": "Bundle",
        "id": "ack-1",
        "type": "message",
        "entry": [
            {
                "fullUrl": "urn:uuid:5d2c1f6e-0000-4000-8000-000000000001",
                "resource": {
                    "resourceType": "MessageHeader",
                    "id": "5d2c1f6e-0000-4000-8000-000000000001",
                    "event": {"system": "https://fhir.nhs.uk/STU3/CodeSystem/ITK-MessageEvent-2", "code": "ITK008M"},
                    "timestamp": "2026-11-23T12:05:00+00:00",
                    "source": {"endpoint": PRACTICE_MAILBOX},
                    "response": {"identifier": header_id, "code": code},
                },
            },
            {
                "fullUrl": "urn:uuid:5d2c1f6e-0000-4000-8000-000000000002",
                "resource": {
                    "resourceType": "OperationOutcome",
                    "id": "5d2c1f6e-0000-4000-8000-000000000002",
                    "issue": [
                        {
                            "severity": "information" if code == "ok" else "fatal",
                            "code": "informational" if code == "ok" else "not-found",
                            "details": {"coding": [{"system": ITK_RESPONSE_CODES, "code": itk_code, "display": display}]},
                        }
                    ],
                },
            },
        ],
    }
    # fhir.resources annotates model_dump_xml() -> str, but it returns lxml's bytes
    return cast(bytes, Stu3Bundle.model_validate(ack).model_dump_xml())


def test_111_referral_to_a_consultation_report_in_the_practice_mesh_inbox(app, client, clock, mesh, tmp_path) -> None:
    """Acceptance: 111 referral -> CAS case -> consultation -> completed -> ITK3 Send Document (GPFED_CONSULT_REPORT)
    with the PDF and the consultation notes in the practice's MESH inbox; the canonical R4 document validates; the
    MESH download and the GP's business acknowledgement are recorded against the letter."""
    completed_case(client)
    (row,) = outbox(client)
    letter_id = row["letter"].split("/")[1]
    worker = mesh_worker(app, clock, mesh, tmp_path)
    assert worker.run_pass()["sent"] == 1
    (message,) = mesh.inbox(PRACTICE_MAILBOX)
    assert message["workflow_id"] == "GPFED_CONSULT_REPORT" and message["local_id"] == letter_id
    assert message["sender"] == GATEWAY_MAILBOX and message["content_type"] == "application/fhir+xml"
    assert (
        message["subject"]
        == "Consultation report for Alex Testpatient, NHS Number 9990000018, seen at IAP MHCAS BNSSG, ODS Code RVN, Version 1"
    )
    itk = Stu3Bundle.model_validate_xml(message["body"])
    header = entry_resource(itk, 0, Stu3MessageHeader)
    assert header.event.code == "ITK007C" and header.source.endpoint == GATEWAY_MAILBOX
    document = entry_resource(itk, 2, Stu3Bundle)
    composition = entry_resource(document, 0, Stu3Composition)
    assert composition.type.coding is not None
    assert composition.type.coding[0].code == "371531000" and composition.title == "Consultation report"
    binary = next(e.resource for e in document.entry or [] if isinstance(e.resource, Stu3Binary))
    assert composition.section is not None and composition.section[0].entry is not None
    assert composition.section[0].entry[0].reference == f"urn:uuid:{binary.id}" and binary.contentType == "application/pdf"
    assert binary.content is not None and binary.content.startswith(b"%PDF")  # the model decodes the base64 on the wire
    pdf = PdfReader(io.BytesIO(binary.content))
    text = " ".join(" ".join((page.extract_text() or "") for page in pdf.pages).split())
    assert " ".join(NOTES.split()) in text and "NHS number: 999 000 0018" in text
    assert any(NOTES in (s.text.div if s.text and s.text.div else "").replace("&#39;", "'") for s in composition.section)
    canonical = client.get(f"/fhir/Bundle/{letter_id}").json()
    checked = fhir_validate(tmp_path, "canonical", canonical)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    sent = client.get(f"/outbox/{row['id']}").json()
    assert sent["status"] == "sent" and sent["workflow_id"] == "GPFED_CONSULT_REPORT" and sent["address"] == PRACTICE_MAILBOX
    # the practice downloads it (MESH acknowledgement) and answers with a business acknowledgement
    assert header.id is not None
    with mesh.client(PRACTICE_MAILBOX) as gp:
        gp.acknowledge_message(message["id"])
        gp.send_message(GATEWAY_MAILBOX, itk_ack(header.id, "ok", "30001", "Patient known here"), workflow_id="GPFED_CONSULT_REPORT_ACK")
    assert worker.run_pass()["acknowledgements"] == 2
    done = client.get(f"/outbox/{row['id']}").json()
    assert done["status"] == "delivered"
    kinds = {(e["kind"], e["outcome"]) for e in done["events"]}
    assert ("mesh", "delivered") in kinds and ("itk-business-ack", "delivered") in kinds
    assert mesh.inbox(GATEWAY_MAILBOX) == []  # the acknowledgement was read and acknowledged
    assert client.get("/fhir/CommunicationRequest").json()["entry"][0]["resource"]["status"] == "completed"
    worker.close()


def test_do_not_contact_gp_client_gets_no_letter_and_the_decision_is_recorded_TT_14(app, client, clock, mesh, tmp_path) -> None:
    """Acceptance: a self-referred client who asked that the GP not be contacted: the practice inbox stays empty."""
    patient_id = pcmis_contacts(client)
    request = letter_request("tt-discharge-mesh", "tt-discharge", patient_id, [], lines=("Discharged after step 2.",))
    assert client.post("/fhir/CommunicationRequest", content=json.dumps(request)).status_code == 201
    worker = mesh_worker(app, clock, mesh, tmp_path)
    assert worker.run_pass().get("withheld") == 1
    assert mesh.inbox(PRACTICE_MAILBOX) == []
    (row,) = outbox(client, status="withheld")
    assert row["reason"].startswith("TT-14: the client asked that the GP not be contacted")
    events = client.get(f"/outbox/{row['id']}").json()["events"]
    assert ("consent", "withheld") in {(e["kind"], e["outcome"]) for e in events}
    worker.close()


@pytest.mark.parametrize(
    ("dob_format", "address"), [("%Y%m%d", GPPROVIDER_TESTPATIENT), ("%d%m%Y", "GPPROVIDER_9990000018_12041988_TESTPATIENT")]
)
def test_gp_letter_without_a_mailbox_uses_gpprovider_automatic_routing(app, client, clock, mesh, tmp_path, dob_format, address) -> None:
    """GPPROVIDER_<NHS number>_<date of birth>_<SURNAME>, the date format configurable (public sources disagree)."""
    completed_case(client)
    worker = mesh_worker(app, clock, mesh, tmp_path, mesh_mailboxes={}, dob_format=dob_format)
    worker.run_pass()
    (row,) = outbox(client)
    assert row["address"] == address
    if address == GPPROVIDER_TESTPATIENT:  # registered in the sandbox (it does not route GPPROVIDER_ itself)
        assert row["status"] == "sent" and len(mesh.inbox(GPPROVIDER_TESTPATIENT)) == 1
    else:  # MESH does not know that address: a permanent refusal, dead-lettered with MESH's reason
        assert row["status"] == "dead" and "Unregistered to address" in row["reason"]
    worker.close()


def test_mesh_error_report_and_negative_itk_ack_mark_the_letter_failed(app, client, clock, mesh, tmp_path) -> None:
    completed_case(client)
    completed_case(client, "option2-red-flag.case.json")
    worker = mesh_worker(app, clock, mesh, tmp_path, mesh_mailboxes={"L81001": PRACTICE_MAILBOX, "L81002": "X26ABC3"})
    worker.run_pass()
    rows = {r["recipient"]: r for r in outbox(client)}
    assert {r["status"] for r in rows.values()} == {"sent"}
    first, second = rows["L81001"], rows["L81002"]
    mesh.report(GATEWAY_MAILBOX, first["message_id"], first["letter"].split("/")[1], "GPFED_CONSULT_REPORT")
    with mesh.client("X26ABC3") as gp:
        gp.send_message(
            GATEWAY_MAILBOX,
            itk_ack(second["itk_message_id"], "fatal-error", "30002", "Patient not known here"),
            workflow_id="GPFED_CONSULT_REPORT_ACK",
        )
    worker.run_pass()
    failed = {r["recipient"]: r for r in outbox(client, status="failed")}
    assert "MESH report" in failed["L81001"]["reason"]
    assert "ITK 30002 Patient not known here (fatal-error)" in failed["L81002"]["reason"]
    worker.close()


def test_mh_discharge_goes_as_mh_edischarge_on_its_own_workflow(app, client, clock, mesh, tmp_path) -> None:
    task = completed_case(client)
    request = letter_request(
        "mh-discharge-1", "mh-discharge", task["for"]["reference"].split("/")[1], [f"Task/{task['id']}"], rules=("PC-13",)
    )
    assert client.post("/fhir/CommunicationRequest", content=json.dumps(request)).status_code == 201
    worker = mesh_worker(app, clock, mesh, tmp_path)
    worker.run_pass()
    workflows = sorted(m["workflow_id"] for m in mesh.inbox(PRACTICE_MAILBOX))
    assert workflows == ["GPFED_CONSULT_REPORT", "TOC_FHIR_MH_DISCH"]
    discharge = next(m for m in mesh.inbox(PRACTICE_MAILBOX) if m["workflow_id"] == "TOC_FHIR_MH_DISCH")
    assert entry_resource(Stu3Bundle.model_validate_xml(discharge["body"]), 0, Stu3MessageHeader).event.code == "ITK004D"
    worker.close()


def test_mesh_down_for_the_first_attempts_delivers_once_when_it_returns(app, client, clock, mesh, tmp_path) -> None:
    """Reliability over MESH: nothing listening (connection refused) twice, then the real sandbox: one message."""
    completed_case(client)
    (row,) = outbox(client)
    down = mesh_worker(app, clock, mesh, tmp_path, url=f"http://127.0.0.1:{free_port()}")
    for _ in range(2):
        assert down.deliver_once() == [(row["id"], "pending")]
        clock.set(clock.now().replace(hour=clock.now().hour + 1))
    up = mesh_worker(app, clock, mesh, tmp_path)
    assert up.deliver_once() == [(row["id"], "sent")]
    assert len(mesh.inbox(PRACTICE_MAILBOX)) == 1
    assert [e["outcome"] for e in client.get(f"/outbox/{row['id']}").json()["events"] if e["kind"] == "attempt"] == [
        "started", "retry", "started", "retry", "started", "sent"
    ]  # fmt: skip
    down.close()
    up.close()


def test_pathway_progress_letter_reaches_the_practice_with_the_latest_scores_TT_14(app, client, clock, mesh, tmp_path) -> None:
    """The pathway rules' letters (issue 6) go through the outbox: a TT progress letter with the latest PHQ-9 and GAD-7."""
    from gateway.pathways.demo import gad7, phq9, referral

    body = referral(
        "north-essex-mid", "R-LETTER", "2026-11-02T10:00:00+00:00", "1990-01-01", practice="L81001", responses=(phq9(12), gad7(6))
    )
    routed = client.post("/fhir/ServiceRequest/$route", json=body)
    assert routed.status_code == 201, routed.text
    episode = next(p["valueReference"]["reference"] for p in routed.json()["parameter"] if p["name"] == "episode")
    assert client.post(f"/fhir/{episode}/$progress-letter", json={"resourceType": "Parameters", "parameter": []}).status_code == 200
    rows = {r["recipient_kind"]: r for r in outbox(client)}
    assert rows["gp"]["letter_type"] == "tt-progress" and rows["gp"]["recipient"] == "L81001" and "patient" in rows
    worker = mesh_worker(app, clock, mesh, tmp_path)
    worker.deliver_once()
    (message,) = mesh.inbox(PRACTICE_MAILBOX)
    assert message["workflow_id"] == "GPFED_CONSULT_REPORT"
    document = entry_resource(Stu3Bundle.model_validate_xml(message["body"]), 2, Stu3Bundle)
    composition = entry_resource(document, 0, Stu3Composition)
    section = next(s for s in composition.section or [] if s.title == "Outcome measures")
    assert section.text is not None and section.text.div is not None
    measures = section.text.div
    assert "PHQ-9" in measures and "<td>12</td>" in measures and "GAD-7" in measures and "<td>6</td>" in measures
    worker.close()


def test_self_referral_that_refused_gp_contact_gets_no_pathway_letter_to_the_gp_TT_02_TT_14(app, client, clock, mesh, tmp_path) -> None:
    from gateway.pathways.demo import gad7, phq9, referral

    body = referral(
        "north-essex-mid",
        "R-SELF",
        "2026-11-02T10:00:00+00:00",
        "1990-01-01",
        source="self",
        gp_contact_agreed=False,
        practice="L81001",
        responses=(phq9(12), gad7(6)),
    )
    routed = client.post("/fhir/ServiceRequest/$route", json=body)
    assert routed.status_code == 201, routed.text
    episode = next(p["valueReference"]["reference"] for p in routed.json()["parameter"] if p["name"] == "episode")
    assert client.post(f"/fhir/{episode}/$progress-letter", json={"resourceType": "Parameters", "parameter": []}).status_code == 200
    worker = mesh_worker(app, clock, mesh, tmp_path)
    worker.deliver_once()
    assert mesh.inbox(PRACTICE_MAILBOX) == []
    (withheld,) = outbox(client, status="withheld")
    assert withheld["recipient_kind"] == "gp" and "TT-14" in withheld["reason"]
    worker.close()
