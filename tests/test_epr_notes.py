"""CAS consultation notes back to RiO over MLLP (issue 32 section 2; CAS-13), against real MLLP listeners on 127.0.0.1.

The listener stands in for RiO: it answers AA, AE, never, or hangs up mid-message, or answers with an ACK for
another message, and keeps every message it took. Nothing is mocked between the case operation and the socket.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from adapters.hl7v2 import Hl7Error, MllpFramer, build_ack, frame, parse_hl7
from fhir_mapping.hl7v2_notes import NoteEnvelope, build_note_message
from gateway.epr.rules.sender_schema import load_senders
from gateway.platform.settings import Settings
from tests.conftest import NOW, ROOT, fixture_bytes, gateway_settings, task_of
from tests.letter_helpers import make_deliverer, outbox
from tests.test_cas_operations import new_case, op

NOTES = "Synthetic consultation: BP 120|80 & stable; plan A^B.\nSafety plan agreed.\n\nGP review in 2 weeks."
REFUSAL = "PID-3: no such client in RiO"


class Listener:
    """A test EPR's MLLP listener: answers each message as `mode` says; `received` holds every message it took whole."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.1)
        self.port = int(self.server.getsockname()[1])
        self.mode = "AA"  # AA | AE | silent | hang-up | stray
        self.received: list[bytes] = []
        self.connections: list[socket.socket] = []
        self.running = True
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while self.running:
            try:
                connection, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections.append(connection)
            threading.Thread(target=self._session, args=(connection,), daemon=True).start()

    def _session(self, connection: socket.socket) -> None:
        framer = MllpFramer()
        connection.settimeout(10)
        try:
            if self.tls:
                connection = self.tls.wrap_socket(connection, server_side=True)
            while data := connection.recv(65536):
                if self.mode == "hang-up":  # gone mid-message: nothing taken, nothing answered
                    return
                for block in framer.feed(data):
                    self.received.append(block)
                    control_id = parse_hl7(block).header.control_id
                    now = datetime.now(UTC)
                    if self.mode == "AA":
                        connection.sendall(frame(build_ack(control_id, "T02", None, now, ("RIO", "RVN"))))
                    elif self.mode == "AE":
                        error = Hl7Error("AE", REFUSAL, "PID", 3, 204, control_id)
                        connection.sendall(frame(build_ack(control_id, "T02", error, now, ("RIO", "RVN"))))
                    elif self.mode == "stray":  # an ACK, but for another message (Mirth #1441)
                        connection.sendall(frame(build_ack("RIO-OTHER-0001", "T02", None, now, ("RIO", "RVN"))))
        except OSError:
            return
        finally:
            connection.close()

    def close(self) -> None:
        self.running = False
        self.server.close()
        for connection in self.connections:
            connection.close()
        self.thread.join(timeout=5)


@pytest.fixture
def rio() -> Iterator[Listener]:
    listener = Listener()
    yield listener
    listener.close()


@pytest.fixture
def elsewhere() -> Iterator[Listener]:
    listener = Listener()
    yield listener
    listener.close()


def write_profile(folder: Path, profile_id: str, port: int, message: str = "MDM^T02") -> None:
    destination = {"host": "127.0.0.1", "port": port, "timeout_seconds": 0.5, "note_message_type": message}
    profile = {
        "id": profile_id,
        "name": f"Test EPR {profile_id}",
        "source": "local decision (test)",
        "match": {"sending_application": ["RIO"], "sending_facility": [profile_id.upper()[:10]]},
        "destination": destination,
    }
    (folder / f"{profile_id}.yaml").write_text(yaml.safe_dump(profile))


@pytest.fixture
def senders_dir(tmp_path: Path, rio: Listener, elsewhere: Listener) -> Path:
    folder = tmp_path / "senders"
    folder.mkdir()
    write_profile(folder, "rio-test", rio.port)
    return folder


@pytest.fixture
def settings(database_url: str, senders_dir: Path) -> Settings:  # the app fixture (conftest) is built with these
    return gateway_settings(database_url, senders_dir=senders_dir)


@pytest.fixture
def worker(app, clock):  # type: ignore[no-untyped-def]
    deliverer = make_deliverer(app, clock, outbox_max_attempts=5, outbox_backoff_seconds=30.0, outbox_backoff_max_seconds=600.0)
    yield deliverer
    deliverer.close()


def note_rows(client) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    return [row for row in outbox(client) if row["recipient_kind"] == "epr"]


def end_consultation(  # type: ignore[no-untyped-def]
    client, registered: bool = True, notes: str = NOTES, case: str = "option2-standard.case.json"
) -> dict[str, Any]:
    task = new_case(client, case)
    done = op(client, task["id"], "end-assessment", practitioner="Dr Synthetic Registered", registered=registered, notes=notes)
    assert done.status_code == 200, done.text
    return done.json()  # type: ignore[no-any-return]


def deliver_notes(worker) -> list[str]:  # type: ignore[no-untyped-def]
    return [status for delivery, status in worker.deliver_once() if delivery in worker_note_ids(worker)]


def worker_note_ids(worker) -> set[str]:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from gateway.platform.store.models import OutboxRow

    with worker.sessions() as session:
        return set(session.execute(select(OutboxRow.id).where(OutboxRow.recipient_kind == "epr")).scalars())


def test_the_note_round_trip_a_111_case_ended_sends_its_note_to_rio_once_CAS_13(client, worker, rio, clock) -> None:
    task = end_consultation(client)
    (row,) = note_rows(client)  # queued by the operation itself, before any worker ran
    assert row["status"] == "pending" and row["recipient"] == "rio-test" and row["letter_type"] == "epr-note"
    patient = client.get(f"/fhir/{task['for']['reference']}").json()

    assert deliver_notes(worker) == ["delivered"]
    (message,) = rio.received
    parsed = parse_hl7(message)
    assert (parsed.header.message_type, parsed.header.trigger) == ("MDM", "T02")
    assert parsed.patient.nhs_number == patient["identifier"][0]["value"]
    assert parsed.patient.family == patient["name"][0]["family"]
    (note,) = parsed.notes
    assert note.text == NOTES  # exact: delimiters escaped, lines kept
    delivered = client.get(f"/outbox/{row['id']}").json()
    assert delivered["status"] == "delivered" and delivered["transport"] == "mllp"
    assert delivered["message_id"] == parsed.header.control_id  # the ACK's MSA-2 matched this MSH-10

    clock.set(NOW + timedelta(hours=1))
    assert deliver_notes(worker) == [] and len(rio.received) == 1  # once
    explained = client.get(f"/fhir/Task/{task['id']}/$explain").json()
    assert any("epr-notes (CAS-13)" in p.get("valueString", "") for p in explained["parameter"])


def test_an_unregistered_consultations_note_goes_only_once_ratified_CAS_13(client, worker, rio) -> None:
    task = end_consultation(client, registered=False)
    assert note_rows(client) == []  # not final: awaits a registered practitioner's ratification
    refused = op(client, task["id"], "ratify", practitioner="Practitioner U", registered=False)
    assert refused.status_code == 409 and note_rows(client) == []  # a refused operation queues nothing
    ratified = op(client, task["id"], "ratify", practitioner="Practitioner R", registered=True)
    assert ratified.status_code == 200, ratified.text
    assert len(note_rows(client)) == 1
    assert deliver_notes(worker) == ["delivered"] and len(rio.received) == 1


def test_rio_answering_AE_dead_letters_the_note_with_its_reason_and_replay_sends_it_once(client, worker, rio, clock) -> None:
    end_consultation(client)
    rio.mode = "AE"
    assert deliver_notes(worker) == ["dead"]
    (row,) = note_rows(client)
    assert row["status"] == "dead" and "AE" in row["reason"] and REFUSAL in row["reason"]
    assert len(rio.received) == 1

    rio.mode = "AA"
    clock.set(NOW + timedelta(minutes=5))
    assert deliver_notes(worker) == []  # dead stays dead until an operator replays it
    replayed = client.post(f"/outbox/{row['id']}/$replay", headers={"X-User": "Ops Synthetic"})
    assert replayed.status_code == 200 and replayed.json()["status"] == "pending"
    assert deliver_notes(worker) == ["delivered"]
    assert len(rio.received) == 2 and parse_hl7(rio.received[1]).header.control_id == parse_hl7(rio.received[0]).header.control_id
    assert deliver_notes(worker) == [] and len(rio.received) == 2


@pytest.mark.parametrize("mode", ["silent", "hang-up"])
def test_no_ack_or_a_hang_up_is_retried_with_backoff_under_the_same_control_id(client, worker, rio, clock, mode) -> None:
    end_consultation(client)
    rio.mode = mode
    assert deliver_notes(worker) == ["pending"]
    (row,) = note_rows(client)
    assert row["attempts"] == 1 and row["next_attempt_at"] > "2026-11-23T12:00:29Z"  # backoff: about 30 s
    assert ("no ACK within" if mode == "silent" else "closed the connection") in row["reason"]
    assert deliver_notes(worker) == []  # not due yet

    rio.mode = "AA"
    clock.set(NOW + timedelta(minutes=2))
    assert deliver_notes(worker) == ["delivered"]
    control_ids = {parse_hl7(m).header.control_id for m in rio.received}
    assert len(control_ids) == 1  # a copy the receiver may have kept carries the same MSH-10: its duplicate check drops it


def test_an_ack_for_another_message_is_never_taken_for_this_ones(client, worker, rio, clock) -> None:
    end_consultation(client)
    rio.mode = "stray"  # answers, but with MSA-2 naming another message (Mirth #1441)
    assert deliver_notes(worker) == ["pending"]
    (row,) = note_rows(client)
    assert row["status"] == "pending" and "no ACK within" in row["reason"]


def test_a_destination_that_is_down_holds_up_neither_other_destinations_nor_its_other_notes_attempts(
    client, app, clock, rio, elsewhere, senders_dir
) -> None:
    write_profile(senders_dir, "other-epr", elsewhere.port)
    app.state.cases.senders = load_senders(senders_dir)  # the app was built before this second profile was written
    deliverer = make_deliverer(app, clock, outbox_max_attempts=5, outbox_backoff_seconds=30.0)
    try:
        end_consultation(client)
        end_consultation(client, notes="A second synthetic consultation.", case="option1-dx12.case.json")  # another case: its own note
        assert len(note_rows(client)) == 4  # two notes, each to two destinations
        rio.mode = "silent"
        outcomes = [status for delivery, status in deliverer.deliver_once() if delivery in worker_note_ids(deliverer)]
        assert sorted(outcomes) == ["delivered", "delivered", "pending", "pending"]
        assert len(elsewhere.received) == 2  # the other destination got both notes in the same pass
        assert len(rio.received) == 1  # the silent one was waited for once in the pass, not once per note
        rows = {r["recipient"] + str(r["attempts"]) for r in note_rows(client)}
        assert rows == {"other-epr1", "rio-test1", "rio-test0"}  # the note not tried spent no attempt
    finally:
        deliverer.close()


def test_a_cleo_update_ending_a_consultation_and_a_specialist_desk_case_completing_send_their_notes_CAS_13_CAS_15(
    client, worker, rio
) -> None:
    cleo_case = task_of(client.post("/ingest/nhs111", content=fixture_bytes("option2-standard.case.json")).json())
    update = json.loads((ROOT / "fixtures" / "cleo" / "consultation-registered.update.json").read_text()) | {"case_ref": cleo_case["id"]}
    assert client.post("/ingest/cleo", content=json.dumps(update).encode()).status_code == 200
    end_consultation(client, notes="Specialist Desk: notes pulled from RiO and reviewed.", case="specialist-desk-ooh.case.json")
    assert len(note_rows(client)) == 2
    assert deliver_notes(worker) == ["delivered", "delivered"]
    texts = sorted(parse_hl7(m).notes[0].text for m in rio.received)
    assert texts[0] == "Specialist Desk: notes pulled from RiO and reviewed." and "safety plan agreed" in texts[1]


def test_a_tls_destination_gets_the_note_over_tls(client, app, clock, tmp_path) -> None:
    cert, key = self_signed(tmp_path)
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert, key)
    listener = Listener(tls=server_side)
    folder = tmp_path / "tls-senders"
    folder.mkdir()
    write_profile(folder, "rio-tls", listener.port)
    profile = yaml.safe_load((folder / "rio-tls.yaml").read_text())
    profile["destination"] |= {"tls": True, "ca_file": str(cert), "timeout_seconds": 5}
    (folder / "rio-tls.yaml").write_text(yaml.safe_dump(profile))
    app.state.cases.senders = load_senders(folder)
    deliverer = make_deliverer(app, clock, senders_dir=folder)
    try:
        end_consultation(client)
        assert deliver_notes(deliverer) == ["delivered"]
        assert parse_hl7(listener.received[0]).notes[0].text == NOTES
    finally:
        deliverer.close()
        listener.close()


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its own CA), and its key."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test RiO")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.now(UTC) - timedelta(days=1))
        .not_valid_after(datetime.now(UTC) + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "rio.crt", folder / "rio.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


def test_an_oru_r01_destination_gets_the_note_as_one_observation() -> None:
    note = {
        "resourceType": "DocumentReference",
        "id": "note-1",
        "date": "2026-11-23T12:00:00Z",
        "author": [{"display": "Dr Synthetic"}],
        "content": [{"attachment": {"data": "TGluZSAxfGEKCkxpbmUgMyAmIGI="}}],  # "Line 1|a\n\nLine 3 & b"
    }
    patient = {"identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9990000018"}], "name": [{"family": "Test"}]}
    envelope = NoteEnvelope("ORU^R01", "IAPGW", "IAP", "RIO", "RVN")
    parsed = parse_hl7(build_note_message(note, patient, envelope, "IAP0000000000000001", NOW))
    assert (parsed.header.message_type, parsed.header.control_id) == ("ORU", "IAP0000000000000001")
    assert [n.text for n in parsed.notes] == ["Line 1|a\n\nLine 3 & b"]


def deliver_process(database_url: str, senders_dir: Path, now: str, failpoint: str | None = None) -> subprocess.CompletedProcess[str]:
    """`iap-gateway deliver` as its own process (so that a failpoint can SIGKILL it)."""
    env = os.environ | {
        "DATABASE_URL": database_url,
        "IAP_ENVIRONMENT": "test",
        "IAP_SENDERS_DIR": str(senders_dir),
        "IAP_TICK_SECONDS": "0",
        "IAP_MLLP_PORT": "0",
        "IAP_LOG_LEVEL": "WARNING",
    }
    env |= {"IAP_FAILPOINTS": failpoint} if failpoint else {}
    command = [sys.executable, "-m", "gateway.cli", "deliver", "--now", now]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_worker_killed_between_sending_a_note_and_recording_it_resends_it_under_the_same_control_id(
    client, database_url, senders_dir, rio
) -> None:
    end_consultation(client)
    crashed = deliver_process(database_url, senders_dir, "2026-11-23T12:00:00Z", failpoint="outbox.after-send")
    assert crashed.returncode == -signal.SIGKILL
    assert len(rio.received) == 1  # it went (and was ACKed), but the gateway never recorded that
    (row,) = note_rows(client)
    assert row["status"] == "sending"
    restarted = deliver_process(database_url, senders_dir, "2026-11-23T12:10:00Z")  # after the dead worker's lease
    assert restarted.returncode == 0, restarted.stderr
    recorded = client.get(f"/outbox/{row['id']}").json()
    assert recorded["status"] == "delivered"
    # MLLP cannot be asked whether it arrived: sent again, with the same MSH-10, which the receiver's duplicate check drops
    assert len(rio.received) == 2
    assert {parse_hl7(m).header.control_id for m in rio.received} == {recorded["message_id"]}
    assert deliver_process(database_url, senders_dir, "2026-11-23T13:00:00Z").returncode == 0
    assert len(rio.received) == 2
