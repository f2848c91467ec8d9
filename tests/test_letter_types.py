"""Each letter type on its own (issue 34): made by the operation that owes it, then its content and addressees (the
PDF's text, pypdf), its R4 document (validated with ../shared/tools/fhir-validate) and its ITK3 STU3 message (the
Send Document profiles' required elements, ITK007C, the type's title and local extension, STU3 code systems only).

Covered here: the Specialist Desk note (CAS-15), the signposting letter (PC-13), the Talking Therapies assessment
outcome and discharge letters (TT-14, TT-13). The consultation report and progress update are in test_letter_specs.py
and test_letter_reading.py; the MH discharge in test_letters.py.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from fhir_mapping.letters.itk3 import ItkContext, itk3_message_json
from fhir_mapping.letters.types import letter_types
from gateway.pathways.demo import contact, referral
from tests.conftest import fixture_bytes, task_of
from tests.letter_helpers import fhir_validate, outbox, params
from tests.test_letter_specs import _systems
from tests.test_letters import CARECONNECT, SEND_DOCUMENT_REQUIRED, STU3, _by_profile, _paths, pdf_text
from tests.test_pathway_api import PATHWAYS, episode_of, operate, param, route

RULE_ID = re.compile(r"\b(?:CAS|PC|TT)-\d{2}\b")


def _letter(client, letter_type: str) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:  # type: ignore[no-untyped-def]
    """The one letter of `letter_type` in the outbox: its DocumentReference, its R4 document, its delivery rows."""
    rows = [r for r in outbox(client) if r["letter_type"] == letter_type]
    (reference,) = {r["letter"] for r in rows}
    letter = client.get(f"/fhir/{reference}").json()
    document = client.get(f"/fhir/Bundle/{letter['id']}").json()
    return letter, document, rows


def _text(letter: dict[str, Any]) -> str:
    return " ".join(pdf_text(letter).split())


def _check_shapes(tmp_path, letter_type: str, letter: dict[str, Any], document: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The R4 document passes the validator; the ITK3 message has its profiles' required elements. The ITK3 message."""
    entry = letter_types()[letter_type]
    composition = document["entry"][0]["resource"]
    assert composition["category"][0]["coding"][0]["code"] == letter_type
    assert composition["type"]["coding"][0]["code"] == entry.composition_type.code
    assert composition["title"] == entry.composition_title  # GPCM-SD-118
    by_url = {e["fullUrl"].rsplit("/", 1)[-1]: e["resource"] for e in document["entry"]}
    author = by_url[composition["author"][0]["reference"].rsplit("/", 1)[-1]]
    assert author["resourceType"] in ("Practitioner", "Organization") and "IAP gateway" not in json.dumps(document)
    checked = fhir_validate(tmp_path, letter_type, {k: v for k, v in document.items() if k != "meta"})
    assert checked.returncode == 0, checked.stdout + checked.stderr
    pdf = base64.b64decode(letter["content"][0]["attachment"]["data"])
    gp = row["recipient"] if row["recipient_kind"] == "gp" else None
    context = ItkContext(row["id"], entry.itk, entry.local_extension, "X26ABC1", "RVN", gp)
    message = itk3_message_json({k: v for k, v in document.items() if k != "meta"}, pdf, context)
    profiles = _by_profile(message)
    for profile, required in SEND_DOCUMENT_REQUIRED.items():
        if profile == f"{CARECONNECT}CareConnect-Practitioner-1" and author["resourceType"] != "Practitioner":
            continue
        assert profile in profiles, profile
        assert _paths(profiles[profile], required) == [], profile
    header = profiles[f"{STU3}ITK-MessageHeader-2"]
    assert header["event"]["code"] == "ITK007C"
    handling = {e["url"]: e for e in header["extension"][0]["extension"]}
    assert handling["LocalExtension"]["valueString"] == entry.local_extension
    assert profiles[f"{CARECONNECT}CareConnect-Composition-1"]["title"] == entry.composition_title
    assert not [s for s in _systems(message) if s.startswith("http://terminology.hl7.org/")]  # STU3 code systems only
    assert entry.workflow == "GPFED_CONSULT_REPORT"
    return message


def test_the_specialist_desk_note_goes_to_the_gp_with_the_desks_notes_CAS_15(client, tmp_path) -> None:
    task = task_of(client.post("/ingest/nhs111", content=fixture_bytes("specialist-desk-ooh.case.json")).json())
    done = client.post(
        f"/fhir/Task/{task['id']}/$end-assessment",
        content=params(
            practitioner="Dr Synthetic Desk",
            registered=True,
            notes="Seen by the Specialist Desk; RiO notes reviewed.",
            plan="Crisis team to call tomorrow morning.",
        ),
    )
    assert done.status_code == 200, done.text
    letter, document, rows = _letter(client, "specialist-desk-notes")
    (row,) = rows
    assert (row["recipient_kind"], row["recipient"]) == ("gp", "L81007")
    text = _text(letter)
    assert "Your patient was seen out of hours by the Mental Health Specialist Desk" in text
    assert "Seen by the Specialist Desk; RiO notes reviewed." in text and "Crisis team to call tomorrow morning." in text
    assert "To: " in text and "L81007" in text and "Copy:" not in text
    assert "Dr Synthetic Desk" in text and RULE_ID.findall(text) == []
    message = _check_shapes(tmp_path, "specialist-desk-notes", letter, document, row)
    author = _by_profile(message)[f"{CARECONNECT}CareConnect-Practitioner-1"]
    assert author["name"][0]["text"] == "Dr Synthetic Desk"  # the clinician in $end-assessment (GPCM-SD-121)


def test_the_signposting_letter_tells_the_client_where_to_go_PC_13(client, tmp_path) -> None:
    """A crisis referral is redirected, not booked (PC-02, PC-13): the signposting letter says where. The referrer is
    known by name only and the GP is not to be told for this route, so the client's copy is the one that goes, written
    to the client."""
    reply = route(client, json.loads((PATHWAYS / "pc-crisis-response.servicerequest.json").read_text()))
    assert reply.status_code == 201, reply.text
    assert param(reply.json(), "outcome") == "redirect"
    letter, document, rows = _letter(client, "signposting")
    assert [r["recipient_kind"] for r in rows] == ["patient"]
    text = _text(letter)
    assert "After looking at it carefully, we think the support below is better suited to you" in text
    assert "Crisis team" in text and "(the patient)" in text and "GP practice" not in text
    assert RULE_ID.findall(text) == [] and "NHS number: 999 " in text
    _check_shapes(tmp_path, "signposting", letter, document, rows[0])


def _tt_episode(client, ref: str, nhs_number: str = "9990000174") -> str:  # type: ignore[no-untyped-def]
    from gateway.pathways.demo import gad7, phq9

    received = "2026-11-02T10:00:00+00:00"
    body = referral("north-essex-mid", ref, received, "1990-01-01", nhs_number=nhs_number, practice="L81001", responses=(phq9(12), gad7(6)))
    reply = route(client, body)
    assert reply.status_code == 201, reply.text
    return episode_of(reply.json())


def test_the_assessment_outcome_letter_goes_to_the_gp_with_a_copy_to_the_client_TT_14(client, tmp_path) -> None:
    episode = _tt_episode(client, "R-OUTCOME")
    attended = contact("assessment", date_="2026-11-05T10:00:00+00:00", practitioner="PWP Synthetic One")
    reply = operate(client, episode, "record-contact", attended)
    assert reply.status_code == 200, reply.text
    letter, document, rows = _letter(client, "tt-assessment-outcome")
    assert {r["recipient_kind"] for r in rows} == {"gp", "patient"}
    text = _text(letter)
    assert "Your patient has had an initial assessment with NHS Talking Therapies" in text
    assert "Initial assessment completed." in text
    assert "To: " in text and "L81001" in text and "Copy: " in text and "(the patient)" in text
    assert RULE_ID.findall(text) == [] and "NHS number: 999 " in text and "PWP Synthetic One" in text
    message = _check_shapes(tmp_path, "tt-assessment-outcome", letter, document, next(r for r in rows if r["recipient_kind"] == "gp"))
    author = _by_profile(message)[f"{CARECONNECT}CareConnect-Practitioner-1"]
    assert author["name"][0]["text"] == "PWP Synthetic One"  # the practitioner named in $record-contact (GPCM-SD-121)


def test_the_discharge_letter_reports_the_latest_scores_to_gp_and_client_TT_13_TT_14(client, tmp_path) -> None:
    episode = _tt_episode(client, "R-DISCHARGE")
    reply = operate(client, episode, "record-contact", contact("assessment", "dna", "2026-11-10T10:00:00+00:00"))
    assert reply.status_code == 200 and reply.json()["status"] == "finished", reply.text
    letter, document, rows = _letter(client, "tt-discharge")
    assert {"gp", "patient"} <= {r["recipient_kind"] for r in rows}
    text = _text(letter)
    assert "Your patient has been discharged from NHS Talking Therapies" in text
    assert "Discharged from NHS Talking Therapies" in text and "Please contact us if you would like to discuss a re-referral" in text
    measures = document["entry"][0]["resource"]["section"][2]
    assert "PHQ-9" in measures["text"]["div"] and "GAD-7" in measures["text"]["div"]  # TT-14: the latest scores
    assert "PHQ-9" in text and RULE_ID.findall(text) == []
    _check_shapes(tmp_path, "tt-discharge", letter, document, next(r for r in rows if r["recipient_kind"] == "gp"))


def test_each_type_reaches_the_practice_mailbox_once_with_its_workflow_and_subject(app, client, clock, mesh, tmp_path) -> None:
    """Over the real MESH sandbox: the Specialist Desk note (L81007) and the two Talking Therapies letters (L81001)
    arrive once each, on GPFED_CONSULT_REPORT, subject "Consultation report for ..., Version 1" (GPCM-SD-091/092)."""
    from tests.mesh_sandbox import PRACTICE_MAILBOX
    from tests.test_mesh_delivery import mesh_worker

    task = task_of(client.post("/ingest/nhs111", content=fixture_bytes("specialist-desk-ooh.case.json")).json())
    ended = client.post(f"/fhir/Task/{task['id']}/$end-assessment", content=params(practitioner="Dr D", registered=True, notes="Seen."))
    assert ended.status_code == 200, ended.text
    first = _tt_episode(client, "R-MESH-1")
    assert operate(client, first, "record-contact", contact("assessment", date_="2026-11-05T10:00:00+00:00")).status_code == 200
    second = _tt_episode(client, "R-MESH-2", nhs_number="9990000166")
    assert operate(client, second, "record-contact", contact("assessment", "dna", "2026-11-10T10:00:00+00:00")).status_code == 200
    worker = mesh_worker(app, clock, mesh, tmp_path, mesh_mailboxes={"L81001": PRACTICE_MAILBOX, "L81007": "X26ABC3"})
    worker.deliver_once()
    sent = {r["letter_type"]: r for r in outbox(client) if r["recipient_kind"] == "gp"}
    assert {t: r["status"] for t, r in sent.items()} == {
        "specialist-desk-notes": "sent",
        "tt-assessment-outcome": "sent",
        "tt-discharge": "sent",
    }
    practice = sorted(mesh.inbox(PRACTICE_MAILBOX), key=lambda m: str(m["local_id"]))
    desk = mesh.inbox("X26ABC3")
    assert len(practice) == 2 and len(desk) == 1
    for message in [*practice, *desk]:
        assert message["workflow_id"] == "GPFED_CONSULT_REPORT"
        assert message["subject"].startswith("Consultation report for ") and message["subject"].endswith(", Version 1")
        assert ", NHS Number 999" in message["subject"]
    by_letter = {str(m["local_id"]): m for m in [*practice, *desk]}
    assert set(by_letter) == {r["letter"].split("/")[1] for r in sent.values()}  # each letter once, at its practice
    assert by_letter[sent["specialist-desk-notes"]["letter"].split("/")[1]] in desk
    worker.close()
