"""The MLLP listener: HL7 v2 over TCP (asyncio), started by `serve`. One ACK per message, after its commit.

Only configured peers may connect (IAP_MLLP_ALLOWED_PEERS, addresses or networks): anyone else
is disconnected before a byte is read, and the refusal is logged (address only) and audited. A
connection silent for IAP_MLLP_IDLE_TIMEOUT_SECONDS is closed. Each message is audited as an
Import by its peer: with its change when it stores something, on its own when it is refused.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import structlog
from sqlalchemy.orm import Session, sessionmaker

from adapters.hl7v2 import Hl7Error, MllpFramer, build_ack, frame
from gateway.audit import EVENT_IMPORT, AuditContext, audit_context, record
from gateway.clock import Clock
from gateway.metrics import AUTH_REFUSALS, MESSAGES
from gateway.security.principal import Principal

__all__ = ["start_mllp_server", "peer_allowed", "Network"]

log = structlog.get_logger("iap.mllp")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


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
) -> asyncio.Server:
    """Listen on host:port; each framed message from an allowed peer goes to `receive` (in a thread), its ACK back framed."""

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
            writer.close()

    server = await asyncio.start_server(session, host, port, reuse_port=True)  # several `serve` workers share the port
    log.info("mllp.listening", port=server.sockets[0].getsockname()[1], allowed=[str(n) for n in allowed_peers])
    return server


async def _receive_audited(
    receive: Callable[[bytes], bytes], message: bytes, sessions: sessionmaker[Session], context: AuditContext
) -> bytes:
    """One message under its peer's audit context; refusals and re-sends (nothing committed) audited on their own."""
    with audit_context(context):
        ack = await asyncio.to_thread(receive, message)
        code = ack.split(b"\rMSA|", 1)[1][:2].decode() if b"\rMSA|" in ack else "AR"
        MESSAGES.labels(source="hl7v2", outcome="accepted" if code == "AA" else "refused").inc()
        if not context.recorded:
            outcome = ("0", "answered AA (no change)") if code == "AA" else ("4", f"refused: ACK {code}")
            await asyncio.to_thread(record, sessions, context, *outcome)
    return ack


def _now() -> datetime:
    return datetime.now(UTC)
