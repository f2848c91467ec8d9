"""What happened to each inbound HTTP message beyond "taken": refusals kept in the quarantine log, re-sends counted.

A plain ASGI middleware inside the security gate (so the sender is known), on the intake routes alone (the scope
table's rows with a `source`), for POST. It keeps a reference to each body chunk as the route reads it (no copy),
passes the reply on unchanged, and once the reply has gone hands the outcome to `gateway.platform.quarantine` (a write of
its own, in a worker thread, only for a refusal or a re-send). A message taken costs a few attribute reads.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.types import Message, Receive, Scope, Send

from gateway.api.asgi import HttpMiddleware
from gateway.platform.quarantine import CHANNEL_OF_SOURCE, HTTP, Receipt, keep, receiving, settle
from gateway.platform.security.principal import current_principal
from gateway.platform.security.scopes import rule_for

__all__ = ["KeepReceipts"]


class KeepReceipts(HttpMiddleware):
    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        rule = rule_for(scope["method"], scope["path"])
        if rule.source is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        state = scope["app"].state
        principal = current_principal()
        receipt = Receipt(
            channel=CHANNEL_OF_SOURCE.get(rule.source, rule.source),
            transport=HTTP,
            received_at=state.clock.now(),
            client_id=principal.client_id if principal else None,
            service_id=principal.service_id if principal else None,
        )
        chunks: list[bytes] = []
        reply: list[bytes] = []
        complete = gone = buffering = False
        status: int | None = None
        ack_code: str | None = None
        duplicate_of: int | None = None

        async def tee() -> Message:
            nonlocal complete, gone
            message = await receive()
            if message["type"] == "http.request":
                if body := message.get("body", b""):
                    chunks.append(body)
                complete = complete or not message.get("more_body", False)
            elif message["type"] == "http.disconnect" and status is None:
                gone = True  # the sender hung up before its reply: nobody to tell, nothing received to keep
            return message

        async def watch(message: Message) -> None:
            nonlocal status, ack_code, duplicate_of, buffering
            if message["type"] == "http.response.start":
                status = int(message["status"])
                for name, value in message.get("headers", []):
                    if name.lower() == b"x-hl7-ack-code":
                        ack_code = value.decode("latin-1")[:2]
                    elif name.lower() == b"x-duplicate-of" and value.isdigit():
                        duplicate_of = int(value)
                buffering = status >= 400 or ack_code not in (None, "AA")  # only a refusal's reply is read
            elif message["type"] == "http.response.body" and buffering:
                reply.append(message.get("body", b""))
            await send(message)

        with receiving(receipt):
            await self.app(scope, tee, watch)
        if gone:
            return
        request_id = next((value.decode("latin-1") for name, value in scope["headers"] if name.lower() == b"x-request-id"), None)
        headers = {"x-request-id": request_id} if request_id else {}
        settle(
            receipt,
            status=status,
            ack_code=ack_code,
            reply=b"".join(reply),
            raw=b"".join(chunks) if complete else None,
            headers=headers,
            duplicate_of=duplicate_of,
        )
        if receipt.refused or receipt.resent:
            await run_in_threadpool(keep, state.sessions, receipt)
