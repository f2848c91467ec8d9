"""The MLLP listener: HL7 v2 over TCP (asyncio), started by `serve`. One ACK per message, after its commit.

Only configured peers may connect (IAP_MLLP_ALLOWED_PEERS, addresses or networks): anyone else
is disconnected before a byte is read, and the refusal is logged (address only) and audited. A
connection silent for IAP_MLLP_IDLE_TIMEOUT_SECONDS is closed. Each message is audited as an
Import by its peer: with its change when it stores something, on its own when it is refused.

A message the gateway fails to take for a reason of its own (the store failing, a fault) is rolled back and
answered AR (HL7 "application reject": not stored, send it again) with MSA-3 naming a reference; the log line
`mllp.failed` carries the same reference, and the traceback its frames and exception types only. When the store
was unavailable (`gateway.platform.store.db.store_unavailable`: unreachable, restarting, a timeout) MSA-3 says so
(`store unavailable: send it again (<reference>)`) and the log line is `mllp.unavailable`, with no traceback.

Bounded: at most IAP_MLLP_MAX_CONNECTIONS sessions at once (one more is closed unread, logged `mllp.busy` and counted),
and a connection holds at most IAP_MLLP_MAX_BUFFER_BYTES of an unanswered block (a longer one is answered AR and the
connection closed). The port is this gateway's alone: a port already in use fails the start (`PortInUse`), as the
HTTP port does; only `serve --workers N`'s own workers share it (`SHARED_BY_WORKERS`, after the CLI checked it free).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import socket
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import structlog
from sqlalchemy.orm import Session, sessionmaker

from adapters.hl7v2 import Hl7Error, MllpFramer, build_ack, frame, parse_hl7
from gateway.platform.audit import EVENT_IMPORT, AuditContext, audit_context, record
from gateway.platform.clock import Clock
from gateway.platform.metrics import AUTH_REFUSALS, MESSAGES, MLLP_REFUSED_CONNECTIONS
from gateway.platform.quarantine import MLLP, Receipt, keep, receiving, settle
from gateway.platform.security.principal import Principal
from gateway.platform.store.db import store_unavailable

__all__ = ["start_mllp_server", "peer_allowed", "Network", "PortInUse", "check_port_free", "SHARED_BY_WORKERS", "shared_by_workers"]

log = structlog.get_logger("iap.mllp")
tracebacks = logging.getLogger("iap.mllp")  # a failure's traceback (gateway.platform.logging withholds the exceptions' messages)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# set by `serve --workers N` for its workers (after it checked the port free): they, and only they, share the MLLP port
SHARED_BY_WORKERS = "IAP_MLLP_SHARED_BY_WORKERS"


class PortInUse(OSError):
    """The MLLP port is held by another program (another gateway?): the start fails rather than share it."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(
            errno.EADDRINUSE,
            f"the MLLP port {host}:{port} (IAP_MLLP_HOST, IAP_MLLP_PORT) is in use by another program: "
            "a second gateway sharing it would split the sender's messages between two databases",
        )


def shared_by_workers() -> bool:
    """Whether this process is one of `serve --workers N`'s workers, which share the MLLP port (SO_REUSEPORT)."""
    return os.environ.get(SHARED_BY_WORKERS) == "1"


def check_port_free(host: str, port: int) -> None:
    """PortInUse unless host:port can be bound now without sharing (what `serve` checks before it starts workers)."""
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio binds: a TIME_WAIT is no owner
            try:
                probe.bind(address)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    raise PortInUse(host, port) from None
                raise


def peer_allowed(address: str, allowed: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in allowed)


async def start_mllp_server(
    receive: Callable[[bytes], bytes],
    host: str,
    port: int,
    max_bytes: int,
    *,
    allowed_peers: Sequence[Network],
    sessions: sessionmaker[Session],
    clock: Clock,
    idle_timeout: float = 300.0,
    max_connections: int = 16,
    reuse_port: bool = False,
) -> asyncio.Server:
    """Listen on host:port; each framed message from an allowed peer goes to `receive` (in a thread), its ACK back framed.

    `max_bytes` bounds what one connection buffers of an unanswered block; `max_connections` the sessions at once.
    `reuse_port` only for `serve --workers N`'s workers (each its own listener on the one port).
    """
    open_sessions = 0

    def context_for(address: str, principal: Principal | None, description: str) -> AuditContext:
        return AuditContext(principal, address, description, "create", clock, event_type=EVENT_IMPORT)

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        address = str((writer.get_extra_info("peername") or ("?",))[0])
        if not peer_allowed(address, allowed_peers):
            writer.close()
            log.warning("mllp.peer_refused", peer=address)
            AUTH_REFUSALS.labels(reason="mllp-peer").inc()
            refused = context_for(address, None, "MLLP connection from a peer not on the allow-list")
            await asyncio.to_thread(record, sessions, refused, "4", "refused: peer not allowed (IAP_MLLP_ALLOWED_PEERS)")
            return
        nonlocal open_sessions
        if open_sessions >= max_connections:  # nothing read: the sender sees the connection closed and connects again later
            writer.close()
            log.warning("mllp.busy", peer=address, connections=open_sessions)
            MLLP_REFUSED_CONNECTIONS.labels(reason="busy").inc()
            return
        open_sessions += 1
        peer = Principal(f"mllp:{address}", f"MLLP peer {address}", frozenset({"ingest:hl7v2"}))
        framer = MllpFramer(max_bytes)
        try:
            while data := await asyncio.wait_for(reader.read(65536), idle_timeout):
                try:
                    messages = framer.feed(data)
                except Hl7Error as error:  # a block too large: answer and drop the connection
                    writer.write(frame(build_ack(None, "", error, _now())))
                    await writer.drain()
                    MESSAGES.labels(source="hl7v2", outcome="refused").inc()
                    await _lingering_close(reader, writer)
                    break
                for message in messages:  # in order: the ACK for one message before the next is read
                    writer.write(
                        frame(await _receive_audited(receive, message, sessions, context_for(address, peer, "MLLP HL7 v2 message")))
                    )
                    await writer.drain()
        except TimeoutError:
            log.info("mllp.idle_closed", seconds=idle_timeout)
        except (ConnectionResetError, BrokenPipeError):
            log.info("mllp.peer_gone")
        finally:
            open_sessions -= 1
            writer.close()

    try:
        server = await asyncio.start_server(session, host, port, reuse_port=reuse_port or None)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            log.error("mllp.port_in_use", host=host, port=port)
            raise PortInUse(host, port) from None
        raise
    log.info("mllp.listening", port=server.sockets[0].getsockname()[1], allowed=[str(n) for n in allowed_peers])
    return server


async def _lingering_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seconds: float = 2.0) -> None:
    """Half-close, then read and drop what the peer is still sending (bounded in time), so that closing a socket with
    unread input does not reset the connection before the peer has read its AR (a lingering close, as web servers do)."""
    try:
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(seconds):
            while await reader.read(65536):
                pass
    except (TimeoutError, ConnectionResetError, BrokenPipeError):
        pass


async def _receive_audited(
    receive: Callable[[bytes], bytes], message: bytes, sessions: sessionmaker[Session], context: AuditContext
) -> bytes:
    """One message under its peer's audit context; refusals, re-sends and failures (nothing committed) audited on their own.
    A refusal (AE/AR) is kept in the quarantine log and a re-send counted once its ACK is made (gateway.platform.quarantine)."""
    principal = context.principal
    receipt = Receipt("hl7v2", MLLP, context.clock.now(), principal.client_id if principal else None, None)
    with audit_context(context), receiving(receipt):
        try:
            ack = await asyncio.to_thread(receive, message)
        except Exception as error:  # nothing was stored (its transaction rolled back): say so, so that the sender sends it again
            return await _failed(message, error, sessions, context)
        code = ack.split(b"\rMSA|", 1)[1][:2].decode() if b"\rMSA|" in ack else "AR"
        MESSAGES.labels(source="hl7v2", outcome="accepted" if code == "AA" else "refused").inc()
        if not context.recorded:
            outcome = ("0", "answered AA (no change)") if code == "AA" else ("4", f"refused: ACK {code}")
            await asyncio.to_thread(record, sessions, context, *outcome)
    settle(receipt, status=None, ack_code=code, reply=ack, raw=message, headers={})
    if receipt.refused or receipt.resent:
        await asyncio.to_thread(keep, sessions, receipt)
    return ack


async def _failed(message: bytes, error: Exception, sessions: sessionmaker[Session], context: AuditContext) -> bytes:
    """The ACK (AR) for a message the gateway failed to take; logged and audited with a reference, as far as it can be."""
    reference = str(uuid.uuid4())
    # MSA-3 (the reason) holds 80 characters: each text keeps the reference whole
    if store_unavailable(error):  # the store unreachable or timed out: no fault of ours to trace, one line per message
        what, outcome, reason = "store unavailable", "unavailable", f"store unavailable: send it again ({reference})"
        log.warning("mllp.unavailable", reference=reference, error=type(error).__name__)
    else:
        what, outcome, reason = "internal error", "error", f"not stored: send it again (internal error {reference})"
        log.error("mllp.failed", reference=reference, error=type(error).__name__)
        tracebacks.error("MLLP message not taken (reference %s)", reference, exc_info=error)
    MESSAGES.labels(source="hl7v2", outcome=outcome).inc()
    try:
        await asyncio.to_thread(record, sessions, context, "8", f"failed: {what} (reference {reference})")
    except Exception as failure:  # the store that failed the message may fail its AuditEvent too; the AR still goes
        log.error("mllp.failure_not_audited", reference=reference, error=type(failure).__name__)
    control_id: str | None
    try:
        header = parse_hl7(message).header
        control_id, trigger = header.control_id, header.trigger
    except Hl7Error as refused:
        control_id, trigger = refused.control_id, ""
    return build_ack(control_id, trigger, Hl7Error("AR", reason, "MSH", None, 207, control_id), _now())


def _now() -> datetime:
    return datetime.now(UTC)
