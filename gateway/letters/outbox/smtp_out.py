"""Email: a client's letter sent as a PDF attachment over SMTP (stdlib smtplib), where the client agreed to email (TT-15).

Configured by IAP_SMTP_HOST (unset: no email at all; the letter goes by post and the outbox says why), IAP_SMTP_PORT,
IAP_SMTP_SECURITY (`starttls` by default, `tls` for implicit TLS, `none` only for a relay on this host),
IAP_SMTP_USERNAME/IAP_SMTP_PASSWORD (both or neither), IAP_SMTP_FROM (required with the host), IAP_SMTP_CA and
IAP_SMTP_TIMEOUT_SECONDS. The subject and body say only who wrote: the letter itself is the attachment.

A 5xx reply (recipient refused, message refused) is permanent; a 4xx, a dropped connection or a timeout is retried.
Email cannot be asked whether a message went: a delivery whose worker died mid-send is sent again, with the same
Message-ID, so the receiving mail system can drop the copy.
"""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Literal

from sqlalchemy.orm import Session

from gateway.letters.outbox.consent import email_permitted
from gateway.letters.outbox.transports import Outgoing, PermanentError, Sent, TransientError
from gateway.platform.store.repo import get_resource

__all__ = ["SmtpSettings", "SmtpTransport", "EMAIL_ROUTE", "email_address_for"]


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    sender: str  # the From address
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    password: str | None = None
    ca: str | None = None  # CA bundle to verify the server (default: the system's)
    timeout: float = 30.0


class SmtpTransport:
    name = "email"

    def __init__(self, config: SmtpSettings) -> None:
        self.config = config

    def message(self, outgoing: Outgoing) -> EmailMessage:
        """The email: From the service's address, To the client, the PDF attached; no clinical detail outside the PDF."""
        message = EmailMessage()
        message["From"] = self.config.sender
        message["To"] = outgoing.address
        message["Subject"] = outgoing.subject or "A letter from your NHS mental health service"
        message["Message-ID"] = f"<{outgoing.delivery_id}@iap-gateway.invalid>"  # the same on a re-send
        message.set_content(
            "Please find your letter attached (PDF).\n\n"
            "This mailbox is not monitored: to contact the service, use the telephone number or address in the letter.\n"
        )
        message.add_attachment(
            outgoing.body, maintype="application", subtype="pdf", filename=outgoing.filename or f"{outgoing.letter_id}.pdf"
        )
        return message

    def _connect(self) -> smtplib.SMTP:
        config = self.config
        context = ssl.create_default_context(cafile=config.ca) if config.security != "none" else None
        if config.security == "tls":
            return smtplib.SMTP_SSL(config.host, config.port, timeout=config.timeout, context=context)
        smtp = smtplib.SMTP(config.host, config.port, timeout=config.timeout)
        if config.security == "starttls":
            smtp.starttls(context=context)
        return smtp

    def send(self, outgoing: Outgoing) -> Sent:
        message = self.message(outgoing)
        try:
            with self._connect() as smtp:
                if self.config.username:
                    smtp.login(self.config.username, self.config.password or "")
                refused = smtp.send_message(message)
        except smtplib.SMTPRecipientsRefused as exc:
            code = next((c for c, _ in exc.recipients.values()), 550)
            raise (PermanentError if code >= 500 else TransientError)(f"SMTP: recipient refused ({code})") from None
        except smtplib.SMTPResponseException as exc:
            error = PermanentError if exc.smtp_code >= 500 else TransientError
            raise error(f"SMTP {exc.smtp_code}: {_said(exc.smtp_error)}") from None
        except smtplib.SMTPNotSupportedError:
            raise PermanentError("SMTP: the server does not offer STARTTLS (IAP_SMTP_SECURITY)") from None
        except (smtplib.SMTPException, OSError) as exc:  # connection refused or dropped, timeout, TLS failure
            raise TransientError(f"SMTP: {type(exc).__name__}") from None
        if refused:
            raise PermanentError(f"SMTP: recipient refused ({next(iter(refused.values()))[0]})")
        return Sent(str(message["Message-ID"]), delivered=True, detail=f"emailed via {self.config.host}")

    def find_sent(self, outgoing: Outgoing) -> str | None:
        return None  # SMTP cannot be asked; the same Message-ID lets the receiver drop a second copy


def _said(error: bytes | str) -> str:
    text = error.decode("utf-8", errors="replace") if isinstance(error, bytes) else str(error)
    return text[:200]


EMAIL_ROUTE = "the client's email address on record"  # the row's address: the address itself is a patient identifier
_EMAIL_MODE = "EMAILWRIT"  # CommunicationRequest.medium (v3-ParticipationMode): email


def email_address_for(
    session: Session, letter: dict[str, Any], patient_id: str, patient: dict[str, Any], configured: bool
) -> tuple[str | None, str | None]:
    """A client's letter: (the address to email it to, None), or (None, why it goes by post instead) when its request
    asked for email (TT-18 where TT-15 email consent was recorded), or (None, None) when it did not ask."""
    related = ((letter.get("context") or {}).get("related") or [{}])[0].get("reference", "")
    request = (
        get_resource(session, "CommunicationRequest", related.split("/", 1)[1]) if related.startswith("CommunicationRequest/") else None
    )
    mediums = [c.get("code") for m in (request or {}).get("medium", []) for c in m.get("coding", [])]
    if _EMAIL_MODE not in mediums:
        return None, None
    if not configured:
        return None, "email asked for (TT-15) but no email is configured (IAP_SMTP_HOST): sent by post"
    if not email_permitted(session, patient_id):
        return None, "email asked for but the client's contact preferences no longer permit email (TT-15): sent by post"
    address = next((t.get("value") for t in patient.get("telecom", []) if t.get("system") == "email" and t.get("value")), None)
    if not address or "@" not in str(address):
        return None, "email asked for (TT-15) but no email address is recorded for the client: sent by post"
    return str(address), None
