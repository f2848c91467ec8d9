"""RiO over HL7 v2: HTTP and a real MLLP session, ACKs, duplicates, bad input, fuzzing."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import adapters.hl7v2
from adapters.hl7v2 import MLLP_END, MLLP_START, Hl7Error, MllpFramer, frame, parse_hl7
from gateway.epr.mllp import PortInUse, start_mllp_server
from gateway.platform.settings import Settings
from tests.conftest import ROOT, fixture_bytes, metric_value, refusing_nhs_numbers, task_of
from tests.test_cas_operations import op

RIO = ROOT / "fixtures" / "rio"


def rio(name: str) -> bytes:
    return (RIO / name).read_bytes()


def msa(ack: bytes) -> list[str]:
    segment = next(s for s in ack.decode().split("\r") if s.startswith("MSA|"))
    return segment.split("|")


def err(ack: bytes) -> str:
    return next((s for s in ack.decode().split("\r") if s.startswith("ERR|")), "")


def post(client, body: bytes):  # type: ignore[no-untyped-def]
    return client.post("/ingest/hl7v2", content=body, headers={"Content-Type": "x-application/hl7-v2+er7"})


def patient(client, nhs: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return client.get("/fhir/Patient", params={"identifier": f"https://fhir.nhs.uk/Id/nhs-number|{nhs}"}).json()["entry"][0]["resource"]


@pytest.mark.parametrize("name", sorted(p.name for p in RIO.glob("*.hl7")))
def test_every_rio_fixture_is_acknowledged_AA_with_msa2_its_control_id(client, name: str) -> None:
    client.post("/ingest/nhs111", content=fixture_bytes("option1-dx12.case.json"))  # the patient the A31 updates
    response = post(client, rio(name))
    assert response.status_code == 200 and response.headers["x-hl7-ack-code"] == "AA"
    control_id = rio(name).decode().split("\r")[0].split("|")[9]
    assert msa(response.content)[:3] == ["MSA", "AA", control_id]


def test_adt_a31_updates_the_registered_gp_and_keeps_what_it_does_not_send(client) -> None:
    client.post("/ingest/nhs111", content=fixture_bytes("option1-dx12.case.json"))  # 9990000042 at L81003
    assert post(client, rio("adt-a31-update.hl7")).headers["x-hl7-ack-code"] == "AA"
    updated = patient(client, "9990000042")
    assert updated["generalPractitioner"] == [{"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "L81099"}}]
    assert updated["address"][0]["line"] == ["9 Moved Road"] and updated["meta"]["versionId"] == "2"


def test_ref_i12_becomes_a_service_request_and_notes_become_documents(client) -> None:
    post(client, rio("ref-i12-referral.hl7"))
    post(client, rio("mdm-t02-document.hl7"))
    referral = client.get("/fhir/ServiceRequest/" + _id(client, "ServiceRequest", "9990000042")).json()
    assert referral["reasonCode"][0]["text"] == "Step up to primary care mental health hub"
    assert referral["identifier"][0]["value"] == "RIO-REF-9001"


def _id(client, rtype: str, nhs: str) -> str:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from gateway.platform.store.models import ResourceRow

    pid = patient(client, nhs)["id"]
    with client.app.state.sessions() as session:
        return (
            session.execute(select(ResourceRow.id).where(ResourceRow.resource_type == rtype, ResourceRow.subject_id == pid)).scalars().one()
        )


def test_duplicate_control_id_gets_the_original_ack_and_is_not_processed_twice(client, stored) -> None:
    first = post(client, rio("mdm-t02-document.hl7"))
    before = stored()
    again = post(client, rio("mdm-t02-document.hl7"))
    assert again.content == first.content and stored() == before


@pytest.mark.parametrize(
    ("body", "ack", "where", "code"),
    [
        (b"GARBAGE\rPID|1", "AR", "MSH", "100"),
        (rio("adt-a04-register.hl7").replace(b"|^~\\&|", b"|^~#&|", 1), "AR", "MSH^1^2", "102"),
        (rio("adt-a04-register.hl7").replace(b"|2.4\r", b"|2.7\r", 1), "AR", "MSH^1^12", "203"),
        (rio("adt-a04-register.hl7").replace(b"ADT^A04^ADT_A01", b"SIU^S12^SIU_S12", 1), "AR", "MSH^1^9", "200"),
        (rio("oru-r01-progress-note.hl7").split(b"\rOBX|")[0] + b"\r", "AE", "OBX", "100"),
        (rio("adt-a04-register.hl7").replace(b"9990000131", b"9990000132", 1), "AE", "PID^1^3", "102"),
        (rio("adt-a04-register.hl7").replace(b"9990000131^^^NHS^NH", b"", 1), "AE", "PID^1^3", "101"),
        (rio("mdm-t02-document.hl7").replace(b"20261123105500+0000", b"20260329013000", 1), "AE", "TXA^1^4", "102"),
        (rio("ref-i12-referral.hl7").replace(b"|RIO-REF-9001|", b"||", 1), "AE", "RF1^1^6", "101"),
    ],
    ids=[
        "garbled",
        "wrong-encoding-characters",
        "unsupported-version",
        "unsupported-type",
        "missing-segment",
        "bad-nhs-number",
        "no-patient-identifier",
        "local-time-skipped-in-spring",
        "missing-referral-id",
    ],
)
def test_bad_hl7_gets_an_ae_or_ar_ack_naming_the_field_and_stores_nothing(
    client, stored, body: bytes, ack: str, where: str, code: str
) -> None:
    before = stored()
    response = post(client, body)
    assert response.headers["x-hl7-ack-code"] == ack
    assert msa(response.content)[1] == ack and len(msa(response.content)) == 4  # MSA-3 says why
    assert err(response.content).startswith(f"ERR|{where}") and f"^{code}&" in err(response.content)
    assert stored() == before


def test_rio_notes_for_a_specialist_desk_case_go_with_its_gp_notification_CAS_15(client) -> None:
    """CAS-15: notes pulled from RiO attach to the case and to the GP notification sent when it completes."""
    task = task_of(client.post("/ingest/nhs111", content=fixture_bytes("specialist-desk-ooh.case.json")).json())
    assert post(client, rio("oru-r01-progress-note.hl7")).headers["x-hl7-ack-code"] == "AA"  # before completion
    op(client, task["id"], "end-assessment", practitioner="Practitioner R", registered=True, notes="Reviewed RiO notes.")
    (request,) = [e["resource"] for e in client.get("/fhir/CommunicationRequest", params={"status": "active"}).json()["entry"]]
    documents = [client.get(f"/fhir/{a['reference']}").json() for a in request["about"] if a["reference"].startswith("DocumentReference/")]
    assert sorted(d["type"]["text"] for d in documents) == ["CAS consultation notes", "Consultation note"]  # ours (CAS-13) and RiO's
    rio_note = next(d for d in documents if d["type"]["text"] == "Consultation note")
    assert rio_note["context"]["related"] == [{"reference": f"Task/{task['id']}"}]
    late = rio("oru-r01-progress-note.hl7").replace(b"RIO-ORU-0001", b"RIO-ORU-0002").replace(b"RIO-NOTE-77", b"RIO-NOTE-78")
    assert post(client, late).headers["x-hl7-ack-code"] == "AA"  # after completion: added to the pending notification
    (request,) = [e["resource"] for e in client.get("/fhir/CommunicationRequest", params={"status": "active"}).json()["entry"]]
    assert len([a for a in request["about"] if a["reference"].startswith("DocumentReference/")]) == 3
    # the pending letter is replaced by one with the late note; its undelivered delivery is superseded
    statuses = sorted(e["status"] for e in client.get("/outbox").json()["entries"])
    assert statuses == ["pending", "superseded"]


@contextmanager
def running_mllp(
    app: Any, allowed: str = "127.0.0.1", idle_timeout: float = 300.0, port: int = 0, max_connections: int = 16, max_bytes: int = 1_048_576
) -> Iterator[int]:
    """A real MLLP listener on 127.0.0.1 (its own event loop in a thread) for `app`, allowing only `allowed`; yields its port."""
    loop = asyncio.new_event_loop()
    peers = Settings(mllp_allowed_peers=allowed).mllp_peers
    state = app.state
    server = loop.run_until_complete(
        start_mllp_server(
            state.hl7.receive,
            "127.0.0.1",
            port,
            max_bytes,
            allowed_peers=peers,
            sessions=state.sessions,
            clock=state.clock,
            idle_timeout=idle_timeout,
            max_connections=max_connections,
        )
    )
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield server.sockets[0].getsockname()[1]
    finally:

        async def shutdown() -> None:  # close the listener and every session, so no socket outlives the test
            server.close()
            await server.wait_closed()
            sessions = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in sessions:
                task.cancel()
            await asyncio.gather(*sessions, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@pytest.fixture
def mllp_port(app: Any) -> Iterator[int]:
    with running_mllp(app) as port:
        yield port


def read_acks(sock: socket.socket, count: int) -> list[bytes]:
    framer = MllpFramer()
    acks: list[bytes] = []
    sock.settimeout(30)
    while len(acks) < count:
        data = sock.recv(65536)
        assert data, f"the gateway closed the connection after {len(acks)} of {count} ACKs"
        acks += framer.feed(data)
    return acks


def test_a_real_mllp_session_acks_every_message_and_the_resources_appear(client, mllp_port: int) -> None:
    adt, oru, ref = rio("adt-a04-register.hl7"), rio("oru-r01-progress-note.hl7"), rio("ref-i12-referral.hl7")
    with socket.create_connection(("127.0.0.1", mllp_port)) as sock:
        sock.sendall(frame(adt) + frame(oru))  # two in one write
        split = frame(ref)
        sock.sendall(split[:40])  # one split across writes
        sock.sendall(split[40:])
        acks = read_acks(sock, 3)
    assert [msa(a)[1:3] for a in acks] == [["AA", "RIO-ADT-0002"], ["AA", "RIO-ORU-0001"], ["AA", "RIO-REF-0001"]]
    assert patient(client, "9990000131")["generalPractitioner"][0]["identifier"]["value"] == "J83002"
    assert client.get(f"/fhir/ServiceRequest/{_id(client, 'ServiceRequest', '9990000042')}").status_code == 200


def test_mllp_bad_message_gets_its_nack_on_the_same_session(mllp_port: int) -> None:
    with socket.create_connection(("127.0.0.1", mllp_port)) as sock:
        sock.sendall(
            b"noise" + frame(b"MSH|^~\\&|RIO|RVN|IAPGW|IAP|20261123+0000||ADT^A04|C1|P|2.7\r") + frame(rio("adt-a04-register.hl7"))
        )
        first, second = read_acks(sock, 2)
    assert msa(first)[1:3] == ["AR", "C1"] and msa(second)[1] == "AA"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=8))
def test_mllp_framer_reassembles_whatever_the_split(chunks: list[bytes]) -> None:
    payload = b"".join(chunks).replace(MLLP_START, b"").replace(MLLP_END, b"")
    stream = frame(payload) + frame(b"second")
    framer, out = MllpFramer(), []
    step = max(1, len(stream) // (len(chunks) + 1))
    for start in range(0, len(stream), step):
        out += framer.feed(stream[start : start + step])
    assert out == [payload, b"second"]


def _outcome(data: bytes) -> object:
    try:
        return parse_hl7(data)
    except Hl7Error as error:
        return ("refused", error.ack, error.code, error.segment, error.field_no, error.text)


_ER7_PIECES = ["|", "^", "~", "\\", "&", "\r", "\r", "\n", " ", "\t", "A", "z", "0", "#", ".", "é", "\x00"] + [
    f"\r{name}" for name in ("MSH|", "MSH", "PID|", "OBX|1|TX|", "ZAB|", "ZA|", "Z", "NTE", "pid|", "XYZ|", " EVN|", "EVN ")
]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(sorted(RIO.glob("*.hl7")) + sorted((ROOT / "fixtures" / "uk-hl7v2").glob("*.hl7")))
    .map(lambda p: p.read_bytes())
    .flatmap(
        lambda good: st.lists(st.tuples(st.integers(9, len(good)), st.lists(st.sampled_from(_ER7_PIECES), max_size=4)), max_size=6).map(
            lambda edits: _apply(good, edits)
        )
    )
)
def test_skipping_hl7apy_for_plain_segments_changes_no_outcome(data: bytes) -> None:
    """The shortcut in parse_hl7 (no hl7apy parse when every segment is a known v2.4 or Z segment) gives what hl7apy gives."""
    fast = _outcome(data)
    with mock.patch.object(adapters.hl7v2, "_plain_segments", lambda segments, version: False):
        assert _outcome(data) == fast


def _apply(good: bytes, edits: list[tuple[int, list[str]]]) -> bytes:
    out = good
    for position, pieces in edits:
        out = out[:position] + "".join(pieces).encode() + out[position:]
    return out


def test_mllp_refuses_a_peer_not_on_the_allow_list_and_audits_it(app, client, stored) -> None:  # type: ignore[no-untyped-def]
    """MLLP accepts only configured peers: from 127.0.0.2 (allow-list 127.0.0.1) the connection is closed unread."""
    with running_mllp(app, allowed="127.0.0.1") as port, socket.socket() as sock:
        sock.bind(("127.0.0.2", 0))
        sock.settimeout(10)
        sock.connect(("127.0.0.1", port))
        try:
            sock.sendall(frame(rio("adt-a04-register.hl7")))
            answer = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            answer = b""
    assert answer == b""  # no ACK: nothing was read, nothing stored
    assert stored().get("Patient", 0) == 0
    events = client.get("/fhir/AuditEvent", params={"outcome": "4"}).json()["entry"]
    refusal = next(e["resource"] for e in events if e["resource"]["type"]["code"] == "110107")
    assert refusal["agent"][0]["network"]["address"] == "127.0.0.2"
    assert "not allowed" in refusal["outcomeDesc"]


def test_mllp_from_an_allowed_network_is_served_and_audited_as_an_import_by_its_peer(app, client) -> None:  # type: ignore[no-untyped-def]
    with running_mllp(app, allowed="127.0.0.0/29") as port, socket.socket() as sock:
        sock.bind(("127.0.0.2", 0))
        sock.connect(("127.0.0.1", port))
        sock.sendall(frame(rio("adt-a04-register.hl7")))
        (ack,) = read_acks(sock, 1)
    assert msa(ack)[1] == "AA"
    pid = patient(client, "9990000131")["id"]
    events = client.get("/fhir/AuditEvent", params={"patient": pid, "agent": "mllp:127.0.0.2"}).json()["entry"]
    (event,) = [e["resource"] for e in events]
    assert event["type"]["code"] == "110107" and event["action"] == "C" and event["outcome"] == "0"


def test_a_store_failure_over_mllp_is_answered_AR_with_a_reference_and_the_message_is_taken_when_sent_again(app, client, stored) -> None:  # type: ignore[no-untyped-def]
    adt = rio("adt-a04-register.hl7")
    with running_mllp(app) as port:
        with refusing_nhs_numbers(app.state.engine), socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(frame(adt))
            (failed,) = read_acks(sock, 1)
        assert stored().get("Patient", 0) == 0 and stored().get("InboundMessage", 0) == 0  # rolled back, nothing kept
        with socket.create_connection(("127.0.0.1", port)) as sock:  # the sender sends it again, as AR asks
            sock.sendall(frame(adt))
            (taken,) = read_acks(sock, 1)
    _, code, control_id, text = msa(failed)[:4]
    assert (code, control_id) == ("AR", "RIO-ADT-0002") and text.startswith("not stored: send it again (internal error ")
    assert "^207&" in err(failed)  # HL7 table 0357: application internal error
    reference = text.removeprefix("not stored: send it again (internal error ").removesuffix(")")
    assert msa(taken)[1:3] == ["AA", "RIO-ADT-0002"]  # not a re-send of the failed one: that was never stored
    assert patient(client, "9990000131")["identifier"][0]["value"] == "9990000131"
    events = client.get("/fhir/AuditEvent", params={"outcome": "8"}).json()["entry"]
    (event,) = [e["resource"] for e in events if reference in e["resource"].get("outcomeDesc", "")]
    assert event["type"]["code"] == "110107" and event["agent"][0]["who"]["identifier"]["value"] == "mllp:127.0.0.1"


def test_an_idle_mllp_connection_is_closed(app) -> None:  # type: ignore[no-untyped-def]
    with running_mllp(app, idle_timeout=0.3) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(10)
        started = time.monotonic()
        assert sock.recv(1024) == b""  # closed by the gateway, not by us
        assert time.monotonic() - started < 9


def test_a_second_listener_on_a_busy_mllp_port_fails_to_start_rather_than_share_it(app) -> None:  # type: ignore[no-untyped-def]
    """Two gateways on one MLLP port would split RiO's messages between two databases: the second one's start fails."""
    with running_mllp(app) as port:
        state = app.state
        second = start_mllp_server(
            state.hl7.receive, "127.0.0.1", port, 1_048_576, allowed_peers=(), sessions=state.sessions, clock=state.clock
        )
        with pytest.raises(PortInUse, match=f"MLLP port 127.0.0.1:{port} .* is in use"):
            asyncio.run(second)


def test_mllp_connections_past_the_limit_are_closed_unread_and_counted(app, client) -> None:  # type: ignore[no-untyped-def]
    """IAP_MLLP_MAX_CONNECTIONS: with 2 sessions open a third is closed at once; once one ends, a new one is served."""
    refused_before = metric_value(client.get("/metrics").text, "iap_mllp_refused_connections_total", reason="busy")
    adt = rio("adt-a04-register.hl7")
    with running_mllp(app, max_connections=2) as port:
        first, second = socket.create_connection(("127.0.0.1", port)), socket.create_connection(("127.0.0.1", port))
        for sock in (first, second):  # each session is open (its ACK came back) before the third connects
            sock.sendall(frame(adt))
            assert msa(read_acks(sock, 1)[0])[1] == "AA"
        with socket.create_connection(("127.0.0.1", port)) as third:
            third.settimeout(10)
            assert third.recv(1024) == b""  # closed by the gateway, nothing read
        first.close()
        deadline = time.monotonic() + 10
        while True:  # the first session's end is seen by the listener a moment after our close
            with socket.create_connection(("127.0.0.1", port)) as fourth:
                fourth.sendall(frame(adt))
                fourth.settimeout(10)
                data = fourth.recv(65536)
            if data or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert msa(MllpFramer().feed(data)[0])[1] == "AA"
        second.close()
    refused = metric_value(client.get("/metrics").text, "iap_mllp_refused_connections_total", reason="busy") - refused_before
    assert refused >= 1


def test_an_mllp_block_over_the_buffer_limit_is_answered_AR_and_the_connection_closed(app) -> None:  # type: ignore[no-untyped-def]
    """IAP_MLLP_MAX_BUFFER_BYTES: a block longer than the limit, arriving whole or in pieces, is not held on to."""
    big = rio("adt-a04-register.hl7") + b"NTE|1||" + b"x" * 4096 + b"\r"
    for pieces in ([frame(big)], [frame(big)[:3000], frame(big)[3000:]]):
        with running_mllp(app, max_bytes=2048) as port, socket.create_connection(("127.0.0.1", port)) as sock:
            for piece in pieces:
                sock.sendall(piece)
            (ack,) = read_acks(sock, 1)
            assert msa(ack)[1] == "AR" and b"MLLP block over 2048 bytes" in ack
            assert sock.recv(1024) == b""
