"""The MLLP listener: HL7 v2 over TCP (asyncio), started by `serve`. One ACK per message, after its commit."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

import structlog

from adapters.hl7v2 import Hl7Error, MllpFramer, build_ack, frame

__all__ = ["start_mllp_server"]

log = structlog.get_logger("iap.mllp")


async def start_mllp_server(receive: Callable[[bytes], bytes], host: str, port: int, max_bytes: int) -> asyncio.Server:
    """Listen on host:port; each framed message goes to `receive` (in a thread) and its ACK goes back framed."""

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        framer = MllpFramer(max_bytes)
        try:
            while data := await reader.read(65536):
                try:
                    messages = framer.feed(data)
                except Hl7Error as error:  # a block too large: answer and drop the connection
                    writer.write(frame(build_ack(None, "", error, _now())))
                    await writer.drain()
                    break
                for message in messages:  # in order: the ACK for one message before the next is read
                    ack = await asyncio.to_thread(receive, message)
                    writer.write(frame(ack))
                    await writer.drain()
        except (ConnectionResetError, BrokenPipeError):
            log.info("mllp.peer_gone")
        finally:
            writer.close()

    server = await asyncio.start_server(session, host, port, reuse_port=True)  # several `serve` workers share the port
    log.info("mllp.listening", port=server.sockets[0].getsockname()[1])
    return server


def _now() -> datetime:
    return datetime.now(UTC)
