"""How a letter leaves: MESH (NHS England's mesh-client), FHIR push (httpx), or the print folder (the client's copy).
(A note to an EPR leaves over MLLP: gateway.letters.outbox.mllp_out.)

Each transport sends one `Outgoing` and says how it went: `Sent` (with the receiver's id for it),
`TransientError` (worth retrying: connection, timeout, 5xx, 429), or `PermanentError` (retrying
will not help: a 4xx, an unknown MESH recipient; the receiver's OperationOutcome kept). Each can
also say whether a letter already went (`find_sent`), for a delivery whose last attempt died
between sending and recording.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import requests
import structlog
from mesh_client import MeshClient, MeshError

__all__ = [
    "Outgoing",
    "Sent",
    "TransientError",
    "PermanentError",
    "Transport",
    "MeshTransport",
    "FhirPushTransport",
    "PrintTransport",
    "MeshSettings",
]

log = structlog.get_logger("iap.transports")
_RETRYABLE = {408, 425, 429}


@dataclass(frozen=True)
class Outgoing:
    delivery_id: str
    letter_id: str  # MESH local_id, FHIR identifier: a re-send is recognisable
    address: str  # MESH mailbox / GPPROVIDER_ address, FHIR base URL, folder
    body: bytes
    content_type: str
    workflow_id: str | None = None
    subject: str | None = None
    filename: str | None = None
    control_id: str | None = None  # HL7 v2 over MLLP: MSH-10, which the receiver's ACK must quote in MSA-2


@dataclass(frozen=True)
class Sent:
    message_id: str
    delivered: bool  # True when the receiver itself confirmed (FHIR 201, file written); MESH confirms later (acks)
    detail: str = ""


class TransientError(Exception):
    """Worth retrying later."""


class PermanentError(Exception):
    """Retrying the same letter to the same address will not help; `outcome` is what the receiver said."""

    def __init__(self, message: str, outcome: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.outcome = outcome


class Transport(Protocol):
    name: str

    def send(self, outgoing: Outgoing) -> Sent: ...

    def find_sent(self, outgoing: Outgoing) -> str | None: ...


# --- MESH ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeshSettings:
    url: str
    mailbox: str
    password: str
    shared_key: str
    cert: tuple[str, str] | None = None
    ca: str | None = None
    timeout: float = 60.0


def mesh_client(config: MeshSettings) -> MeshClient:
    return MeshClient(
        config.url,
        mailbox=config.mailbox,
        password=config.password,
        shared_key=config.shared_key.encode(),
        cert=config.cert,
        verify=config.ca,
        max_retries=0,  # the outbox retries (durably, with backoff); a send is never retried blind inside a call
        timeout=config.timeout,
    )


def _http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


class MeshTransport:
    name = "mesh"

    def __init__(self, config: MeshSettings) -> None:
        self.config = config

    def send(self, outgoing: Outgoing) -> Sent:
        try:
            with mesh_client(self.config) as client:
                message_id = client.send_message(
                    outgoing.address,
                    outgoing.body,
                    workflow_id=outgoing.workflow_id,
                    subject=outgoing.subject,
                    local_id=outgoing.letter_id,
                    content_type=outgoing.content_type,
                    filename=outgoing.filename,
                )
        except MeshError as exc:  # the MESH send error (e.g. "Unregistered to address"): the address will not start working
            raise PermanentError(f"MESH refused the message: {exc.args[0] if exc.args else exc}") from None
        except requests.RequestException as exc:
            status = _http_status(exc)
            if status is not None and 400 <= status < 500 and status not in _RETRYABLE:
                raise PermanentError(f"MESH answered HTTP {status}") from None
            raise TransientError(f"MESH unreachable or failing: {type(exc).__name__}" + (f" HTTP {status}" if status else "")) from None
        return Sent(str(message_id), delivered=False, detail=f"MESH message {message_id} to {outgoing.address}")

    def find_sent(self, outgoing: Outgoing) -> str | None:
        """Did a message with this local id already leave our outbox? (MESH tracking by local id.)

        mesh-client 5.0.2 tracks by message id only; MESH (and NHS England's sandbox) still answer the
        older tracking-by-local-id path, so it is asked directly on the client's authenticated session.
        """
        try:
            with mesh_client(self.config) as client:
                response = client._session.get(  # noqa: SLF001 - see the docstring
                    f"{client.mailbox_url}/outbox/tracking/{outgoing.letter_id}", timeout=self.config.timeout
                )
        except requests.RequestException as exc:
            raise TransientError(f"MESH tracking unreachable: {type(exc).__name__}") from None
        if response.status_code == 404:
            return None
        if response.status_code == 300:
            return "(several messages with this local id)"
        if response.status_code != 200:
            raise TransientError(f"MESH tracking answered HTTP {response.status_code}")
        body = response.json()
        return str(body.get("messageID") or body.get("messageId") or body.get("message_id") or body.get("dtsId") or "(tracked)")


# --- FHIR push ----------------------------------------------------------------------------------------


class FhirPushTransport:
    """POST the canonical document Bundle to a FHIR R4 server, as a conditional create on its identifier."""

    name = "fhir"

    def __init__(self, client: httpx.Client) -> None:
        self.client = client

    def _url(self, outgoing: Outgoing) -> str:
        return outgoing.address.rstrip("/") + "/Bundle"

    def send(self, outgoing: Outgoing) -> Sent:
        headers = {
            "Content-Type": "application/fhir+json",
            "Accept": "application/fhir+json",
            # the same letter again is recognised by the receiver, not stored twice
            "If-None-Exist": f"identifier=https://tools.ietf.org/html/rfc4122|{outgoing.letter_id}",
        }
        try:
            response = self.client.post(self._url(outgoing), content=outgoing.body, headers=headers)
        except httpx.TimeoutException:
            raise TransientError("FHIR receiver timed out") from None
        except httpx.TransportError as exc:
            raise TransientError(f"FHIR receiver unreachable: {type(exc).__name__}") from None
        if response.status_code >= 500 or response.status_code in _RETRYABLE:
            raise TransientError(f"FHIR receiver answered HTTP {response.status_code}")
        if response.status_code >= 400:
            raise PermanentError(f"FHIR receiver refused the document: HTTP {response.status_code}", _outcome(response))
        location = response.headers.get("Location") or response.headers.get("Content-Location") or ""
        return Sent(location or f"HTTP {response.status_code}", delivered=True, detail=f"HTTP {response.status_code} {location}".strip())

    def find_sent(self, outgoing: Outgoing) -> str | None:
        return None  # the conditional create already makes a re-send harmless


def _outcome(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome" else None


# --- the print folder ---------------------------------------------------------------------------------


class PrintTransport:
    """The client's copy: the PDF written (atomically, once) to the folder the print-and-post service collects from."""

    name = "print"

    def _path(self, outgoing: Outgoing) -> Path:
        return Path(outgoing.address) / (outgoing.filename or f"{outgoing.delivery_id}.pdf")

    def send(self, outgoing: Outgoing) -> Sent:
        path = self._path(outgoing)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".part")
            partial.write_bytes(outgoing.body)
            os.replace(partial, path)
        except OSError as exc:
            raise TransientError(f"print folder not writable: {type(exc).__name__}") from None
        return Sent(path.name, delivered=True, detail=f"written to {path.parent}")

    def find_sent(self, outgoing: Outgoing) -> str | None:
        path = self._path(outgoing)
        return path.name if path.is_file() and path.read_bytes() == outgoing.body else None
