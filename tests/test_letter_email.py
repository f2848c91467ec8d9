"""Client letters by email (TT-15, TT-18) over a real SMTP server (aiosmtpd) started in the test: the wait-estimate
letter of a client who agreed to email is emailed as a PDF; with no email configured, no consent any more, or no
address on record it goes by post and the delivery's events say why; refusals and outages as the other transports."""

from __future__ import annotations

import datetime as dt
import io
import ipaddress
import ssl
from collections.abc import Iterator
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from pypdf import PdfReader

from gateway.letters.outbox.smtp_out import EMAIL_ROUTE
from gateway.platform.store.repo import get_resource, put_resource
from tests.conftest import NOW, free_port
from tests.letter_helpers import make_deliverer, outbox, write_routing
from tests.test_pathway_api import tt_episode
from tests.test_pathway_contact_rules import _agree_email

CLIENT_EMAIL = "synthetic.client@example.com"
FROM = "talkingtherapies.mid@example.nhs.uk"


class Inbox:
    """An aiosmtpd handler keeping what it is sent; `refuse` answers RCPT with that reply instead."""

    def __init__(self) -> None:
        self.messages: list[tuple[Envelope, Message]] = []
        self.refuse: str | None = None

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]) -> str:  # noqa: N802
        if self.refuse:
            return self.refuse
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        self.messages.append((envelope, message_from_bytes(envelope.original_content or b"")))
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


def _waiting_client(app, client, email: str | None = CLIENT_EMAIL, agree: bool = True) -> str:  # type: ignore[no-untyped-def]
    """A client waiting 53 days for a first appointment (TT-18 estimate over the 28-day target) who agreed to email
    (TT-15) and whose email address is on record; the wait letters queued. The episode id."""
    episode = tt_episode(client, received="2026-10-01T10:00:00+01:00", ref="R-EMAIL")
    if agree:
        _agree_email(app, episode)
    if email:  # no intake records a client's email address yet: set on the stored Patient, as one would carry it
        with app.state.sessions.begin() as session:
            stored = get_resource(session, "EpisodeOfCare", episode)
            assert stored is not None
            patient = get_resource(session, "Patient", stored["patient"]["reference"].split("/", 1)[1])
            assert patient is not None
            body = {k: v for k, v in patient.items() if k != "meta"} | {"telecom": [{"system": "email", "value": email, "use": "home"}]}
            put_resource(session, body, NOW, None)
    app.state.pathways.tick(NOW)
    return episode


def _worker(app, clock, tmp_path: Path, **smtp: Any):  # type: ignore[no-untyped-def]
    return make_deliverer(app, clock, routing_file=write_routing(tmp_path), print_dir=tmp_path / "print", **smtp)


def _client_row(client) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    (row,) = [r for r in outbox(client) if r["recipient_kind"] == "patient"]
    return client.get(f"/outbox/{row['id']}").json()  # type: ignore[no-any-return]


def _smtp_settings(port: int, **more: Any) -> dict[str, Any]:
    return {"smtp_host": "127.0.0.1", "smtp_port": port, "smtp_security": "none", "smtp_from": FROM} | more


def test_a_wait_letter_to_a_client_who_agreed_to_email_is_emailed_as_a_pdf_TT_15_TT_18(app, client, clock, smtp, tmp_path) -> None:
    inbox, port = smtp
    _waiting_client(app, client)
    worker = _worker(app, clock, tmp_path, **_smtp_settings(port))
    worker.deliver_once()
    row = _client_row(client)
    assert (row["status"], row["transport"], row["address"]) == ("delivered", "email", EMAIL_ROUTE)  # no address in the outbox
    (envelope, message) = inbox.messages[0]
    assert len(inbox.messages) == 1 and envelope.rcpt_tos == [CLIENT_EMAIL] and envelope.mail_from == FROM
    assert message["From"] == FROM and message["To"] == CLIENT_EMAIL
    assert message["Subject"].startswith("A letter from ") and "999" not in message["Subject"]
    assert message["Message-ID"] == f"<{row['id']}@iap-gateway.invalid>"
    (attachment,) = [part for part in message.walk() if part.get_content_type() == "application/pdf"]
    pdf = attachment.get_payload(decode=True)
    assert isinstance(pdf, bytes)
    text = " ".join(" ".join(page.extract_text() or "" for page in PdfReader(io.BytesIO(pdf)).pages).split())
    assert "Expected wait for a first appointment" in text and "within about 8 weeks" in text and "Samaritans" in text
    body = next(part for part in message.walk() if part.get_content_type() == "text/plain").get_payload(decode=True)
    assert isinstance(body, bytes) and b"attached" in body and b"999" not in body  # nothing clinical outside the PDF
    assert not (tmp_path / "print").exists() or not any((tmp_path / "print").iterdir())  # not posted as well
    worker.close()


@pytest.mark.parametrize(
    ("configured", "agree", "email", "why"),
    [
        (False, True, CLIENT_EMAIL, "no email is configured (IAP_SMTP_HOST): sent by post"),
        (True, False, CLIENT_EMAIL, None),  # never asked for email (TT-15 not recorded): post, nothing to explain
        (True, True, None, "no email address is recorded for the client: sent by post"),
    ],
)
def test_without_email_the_letter_goes_by_post_and_says_why_TT_15(
    app, client, clock, smtp, tmp_path, configured: bool, agree: bool, email: str | None, why: str | None
) -> None:
    inbox, port = smtp
    _waiting_client(app, client, email=email, agree=agree)
    worker = _worker(app, clock, tmp_path, **(_smtp_settings(port) if configured else {}))
    worker.deliver_once()
    row = _client_row(client)
    assert (row["status"], row["transport"]) == ("delivered", "print") and inbox.messages == []
    assert len(list((tmp_path / "print").glob("*.pdf"))) == 1
    notes = [e["detail"] for e in row["events"] if e["kind"] == "channel"]
    if why is None:
        assert notes == []
    else:
        assert any(why in note for note in notes), notes
    worker.close()


def test_consent_to_email_withdrawn_before_sending_means_post_TT_15(app, client, clock, smtp, tmp_path) -> None:
    """Consent is read when the letter goes: the request asked for email, the preferences no longer permit it."""
    from fhir_mapping.pcmis import contact_preferences

    inbox, port = smtp
    episode = _waiting_client(app, client)
    with app.state.sessions.begin() as session:
        stored = get_resource(session, "EpisodeOfCare", episode)
        assert stored is not None
        put_resource(session, contact_preferences(stored["patient"], {"email": False}, None, False, NOW, "PCMIS"), NOW, None)
    worker = _worker(app, clock, tmp_path, **_smtp_settings(port))
    worker.deliver_once()
    row = _client_row(client)
    assert row["transport"] == "print" and inbox.messages == []
    assert any("no longer permit email (TT-15)" in e["detail"] for e in row["events"] if e["kind"] == "channel")
    worker.close()


def test_a_refused_recipient_is_dead_and_a_busy_server_is_retried(app, client, clock, smtp, tmp_path) -> None:
    inbox, port = smtp
    _waiting_client(app, client)
    worker = _worker(app, clock, tmp_path, **_smtp_settings(port))
    inbox.refuse = "451 4.3.0 Try again later"
    worker.deliver_once()
    row = _client_row(client)
    assert row["status"] == "pending" and "SMTP: recipient refused (451)" in row["reason"]
    inbox.refuse = "550 5.1.1 No such user"
    clock.set(clock.now() + dt.timedelta(hours=2))
    worker.deliver_once()
    row = _client_row(client)
    assert row["status"] == "dead" and "SMTP: recipient refused (550)" in row["reason"] and inbox.messages == []
    worker.close()


def test_nothing_listening_is_retried_not_posted(app, client, clock, tmp_path) -> None:
    _waiting_client(app, client)
    worker = _worker(app, clock, tmp_path, **_smtp_settings(free_port()))
    worker.deliver_once()
    row = _client_row(client)
    assert row["status"] == "pending" and row["reason"].startswith("SMTP: ") and not (tmp_path / "print").exists()
    worker.close()


def _self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "smtp.crt", folder / "smtp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


def test_starttls_by_default_verified_against_the_configured_ca(app, client, clock, tmp_path) -> None:
    """The default IAP_SMTP_SECURITY=starttls: the server's certificate is checked (IAP_SMTP_CA); an unknown one is not
    trusted (retried, nothing sent), the right CA lets it through."""
    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    inbox, port = Inbox(), free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, tls_context=context, require_starttls=True)
    controller.start()
    try:
        _waiting_client(app, client)
        settings = {"smtp_host": "127.0.0.1", "smtp_port": port, "smtp_from": FROM}
        untrusted = _worker(app, clock, tmp_path, **settings)
        untrusted.deliver_once()
        assert _client_row(client)["status"] == "pending" and inbox.messages == []
        untrusted.close()
        clock.set(clock.now() + dt.timedelta(hours=2))
        trusted = _worker(app, clock, tmp_path, **settings, smtp_ca=cert)
        trusted.deliver_once()
        assert _client_row(client)["status"] == "delivered" and len(inbox.messages) == 1
        trusted.close()
    finally:
        controller.stop()


def test_smtp_host_without_a_from_address_stops_the_worker_at_start(app, clock, tmp_path) -> None:
    with pytest.raises(ValueError, match="IAP_SMTP_FROM"):
        _worker(app, clock, tmp_path, smtp_host="127.0.0.1")
