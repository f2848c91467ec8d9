"""The MLLP transport: an HL7 v2 message to an EPR's listener, and its ACK read (docs/epr-notes.md).

One connection per attempt (optionally TLS): the message is sent in one MLLP block, then blocks
are read until the ACK whose MSA-2 is this message's MSH-10, within the destination's timeout.
- AA (or CA) -> `Sent`, delivered.
- AE/AR (or CE/CR) -> `PermanentError` with MSA-3 and ERR as the reason: the delivery is dead
  (replayed by an operator once the receiver is put right).
- No ACK in time, a refused or dropped connection, the receiver closing mid-message ->
  `TransientError`: retried with the outbox's backoff.
- An ACK quoting another control id is not this message's (a late ACK of an earlier attempt, or
  another message's: Mirth #1441): it is logged and ignored, and the wait goes on.

MLLP cannot be asked whether a message arrived, so `find_sent` knows nothing: a delivery whose
attempt was interrupted (the worker died between sending and recording) is sent again with the
same MSH-10, and the receiver's duplicate detection on MSH-10 (HL7 "duplicate transmissions")
drops the copy. Delivery is at-least-once on the wire and once in a receiver that checks MSH-10.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass

import structlog

from adapters.hl7v2 import Hl7Error, MllpFramer, frame
from gateway.epr.rules.sender_schema import Destination, SenderRegistry
from gateway.letters.outbox.transports import Outgoing, PermanentError, Sent, TransientError

__all__ = ["MllpTransport", "Ack", "read_ack"]

log = structlog.get_logger("iap.mllp_out")
ACCEPTED = ("AA", "CA")
REFUSED = ("AE", "AR", "CE", "CR")


@dataclass(frozen=True)
class Ack:
    code: str  # MSA-1
    control_id: str  # MSA-2: the MSH-10 of the message it answers
    text: str  # MSA-3, then each ERR segment's fields (as sent)


def read_ack(raw: bytes) -> Ack | None:
    """MSA (and ERR) of an ACK; None when the block is not an HL7 message with an MSA segment."""
    text = raw.decode("utf-8", errors="replace").replace("\r\n", "\r").replace("\n", "\r")
    if not text.startswith("MSH") or len(text) < 4:
        return None
    separator = text[3]
    segments = [s.split(separator) for s in text.split("\r") if s]
    msa = next((s for s in segments if s[0] == "MSA"), None)
    if msa is None or len(msa) < 3:
        return None
    errors = [separator.join(s[1:]).strip(separator) for s in segments if s[0] == "ERR"]
    said = "; ".join(part for part in [msa[3] if len(msa) > 3 else "", *(f"ERR {e}" for e in errors)] if part)
    return Ack(msa[1].strip().upper(), msa[2].strip(), said)


class MllpTransport:
    """Notes to EPR destinations: `Outgoing.address` is the sender profile id whose `destination` says where."""

    name = "mllp"

    def __init__(self, senders: SenderRegistry, max_ack_bytes: int = 1_048_576) -> None:
        self.senders = senders
        self.max_ack_bytes = max_ack_bytes

    def destination(self, profile_id: str) -> Destination | None:
        profile = self.senders.profiles.get(profile_id)
        return profile.destination if profile else None

    def send(self, outgoing: Outgoing) -> Sent:
        destination = self.destination(outgoing.address)
        if destination is None:
            raise PermanentError(f"no MLLP destination in sender profile {outgoing.address!r} (gateway/epr/rules/senders)")
        where = f"{destination.host}:{destination.port}"
        deadline = time.monotonic() + destination.timeout_seconds
        try:
            connection = socket.create_connection((destination.host, destination.port), timeout=destination.timeout_seconds)
        except OSError as exc:
            raise TransientError(f"MLLP {where} unreachable: {type(exc).__name__}") from None
        try:
            if destination.tls:
                context = ssl.create_default_context(cafile=str(destination.ca_file) if destination.ca_file else None)
                connection = context.wrap_socket(connection, server_hostname=destination.host)
            connection.sendall(frame(outgoing.body))
            return self._await_ack(connection, outgoing, where, deadline)
        except TimeoutError:
            raise TransientError(f"MLLP {where}: no ACK within {destination.timeout_seconds:g} s") from None
        except (ssl.SSLError, OSError) as exc:
            raise TransientError(f"MLLP {where}: connection failed before the ACK: {type(exc).__name__}") from None
        finally:
            connection.close()

    def _await_ack(self, connection: socket.socket, outgoing: Outgoing, where: str, deadline: float) -> Sent:
        framer = MllpFramer(self.max_ack_bytes)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            connection.settimeout(remaining)
            data = connection.recv(65536)
            if not data:
                raise TransientError(f"MLLP {where}: the receiver closed the connection before it answered")
            try:
                blocks = framer.feed(data)
            except Hl7Error:
                raise TransientError(f"MLLP {where}: an answer over {self.max_ack_bytes} bytes") from None
            for block in blocks:
                ack = read_ack(block)
                if ack is None or ack.control_id != outgoing.control_id:
                    # not this message's ACK (Mirth #1441): never taken for it
                    log.warning("mllp_out.unmatched_ack", delivery=outgoing.delivery_id, code=ack.code if ack else None)
                    continue
                if ack.code in ACCEPTED:
                    return Sent(ack.control_id, delivered=True, detail=f"ACK {ack.code} from {where} (MSA-2 {ack.control_id})")
                reason = f"{where} answered {ack.code}" + (f": {ack.text}" if ack.text else "")
                if ack.code in REFUSED:
                    raise PermanentError(reason[:1000])
                raise PermanentError(f"{reason[:1000]} (MSA-1 is not an acknowledgment code)")

    def find_sent(self, outgoing: Outgoing) -> str | None:
        return None  # MLLP has no query: a re-send carries the same MSH-10, which the receiver's duplicate check drops
