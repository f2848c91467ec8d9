"""Inbound NHS 111: the flat case JSON and the BaRS $process-message endpoint. HTTP only; work is in gateway.cas.intake."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
from fastapi import APIRouter, Request
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response

from adapters.problems import GatewayInputError, Kind, Problem
from gateway.api.deps import IntakeDep, SessionDep, SettingsDep
from gateway.api.examples import fixture_example
from gateway.api.responses import FHIR_JSON, Busy, FhirResponse, SenderGone
from gateway.cas.cleo import export_case
from gateway.epr.contact_batches import ContactBatches
from gateway.platform.audit import not_audited
from gateway.platform.messages import Reply
from gateway.platform.metrics import INGEST_WAIT_SECONDS
from gateway.platform.settings import Settings

__all__ = ["router", "read_body", "answer", "SenderGone", "body_of"]

router = APIRouter()
T = TypeVar("T")


def body_of(
    media_type: str, description: str, example: str | None = None, examples: dict[str, tuple[str, Any]] | None = None
) -> dict[str, Any]:
    """`openapi_extra` for a route that reads its raw body: what it takes, so /docs and API fuzzers can send one;
    `example` names a fixture (gateway.api.examples), `examples` are named (summary, body) pairs."""
    schema = {"type": "object"} if media_type.endswith("json") else {"type": "string"}
    content: dict[str, Any] = {"schema": schema}
    value = fixture_example(example) if example else None
    if value is not None:
        content["example"] = value
    if examples:
        content["examples"] = {name: {"summary": summary, "value": body} for name, (summary, body) in examples.items()}
    return {"requestBody": {"required": True, "description": description, "content": {media_type: content}}}


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past `limit` bytes (checked before and while reading), and with 408 when it
    has not all arrived within IAP_BODY_TIMEOUT_SECONDS (a slow sender cannot hold a worker)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise GatewayInputError(Problem(Kind.TOO_LARGE, "body", f"body of {declared} bytes is over the {limit}-byte limit"))
    chunks, size = [], 0
    seconds = request.app.state.settings.body_timeout_seconds
    try:
        async with asyncio.timeout(seconds):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise GatewayInputError(Problem(Kind.TOO_LARGE, "body", f"body is over the {limit}-byte limit"))
                chunks.append(chunk)
    except ClientDisconnect:
        # the sender hung up before its message arrived: nothing was received, nothing is stored, nobody to answer
        raise SenderGone() from None
    except TimeoutError:
        raise GatewayInputError(Problem(Kind.TIMEOUT, "body", f"the body did not arrive within {seconds:g} s")) from None
    body = b"".join(chunks)
    if not body:
        raise GatewayInputError(Problem(Kind.REQUIRED, "body", "request body is empty"))
    return body


async def in_worker_thread(request: Request, work: Callable[[bytes], T], raw: bytes) -> T:
    """`work(raw)` in a worker thread, at most `ingest_concurrency` messages at once in this process.

    A message that waits longer than IAP_INGEST_QUEUE_SECONDS for its turn is not taken: `Busy` (503, Retry-After).
    Under a peak the gateway can not keep up with, senders are told to come back instead of being held until they
    time out while the backlog (and the bodies it holds in memory) grows. Nothing of it was stored.
    """
    state = request.app.state
    limiter = getattr(state, "ingest_limiter", None)
    if limiter is None:  # made on first use: a limiter belongs to the running event loop
        limiter = state.ingest_limiter = anyio.CapacityLimiter(state.settings.ingest_concurrency)
    wait, queued = state.settings.ingest_queue_seconds, time.perf_counter()
    try:
        with anyio.fail_after(wait or None):
            await limiter.acquire()
    except TimeoutError:
        not_audited()  # turned away unread: logged and counted, no write (gateway.platform.audit.not_audited)
        raise Busy(wait) from None
    finally:
        INGEST_WAIT_SECONDS.observe(time.perf_counter() - queued)
    try:
        return await anyio.to_thread.run_sync(work, raw)  # not cancellable: the slot is released when the work is done
    finally:
        limiter.release()


async def answer(request: Request, limit: int, receive: Callable[[bytes], Reply], fhir: bool = True) -> Response:
    """Read the body, hand it to `receive` off the event loop, send its reply (FHIR JSON, or plain JSON)."""
    raw = await read_body(request, limit)
    reply = await in_worker_thread(request, receive, raw)
    media_type = FHIR_JSON if fhir else "application/json"
    return Response(reply.encoded(), status_code=reply.status, headers=reply.headers, media_type=media_type)


@router.post(
    "/ingest/nhs111",
    status_code=201,
    summary="Receive a flat NHS 111 case (docs/formats/nhs111-case.md); a re-sent case id gets its original reply",
    description="Scope `ingest:nhs111`. The case becomes Patient, Encounter, Condition and a CAS queue Task (priority and "
    "breach time by the service's rule file, CAS-01..CAS-05). 201 with a transaction-response Bundle; a re-sent case id "
    "gets the original reply (200); a refused case 400/422 with an OperationOutcome naming the field; 503 with Retry-After "
    "when the store is busy (nothing stored).",
    openapi_extra=body_of("application/json", "a flat NHS 111 case (docs/formats/nhs111-case.md)", "nhs111/option2-standard.case.json"),
)
async def ingest_nhs111(request: Request, intake: IntakeDep, settings: SettingsDep) -> Response:
    return await answer(request, settings.max_body_bytes, intake.receive_nhs111_case)


@router.post(
    "/ingest/mhpl",
    status_code=201,
    summary="Receive an Emergency Services Mental Health Professional Line call (docs/formats/mhpl-call.md); timeframe by caller (CAS-06)",
    description="Scope `ingest:mhpl`. The call becomes a CAS queue Task whose timeframe is set by who called (police, "
    "ambulance, fire: CAS-06). Replies as /ingest/nhs111: 201, 200 for a re-send, 400/422 OperationOutcome, 503 Retry-After.",
    openapi_extra=body_of("application/json", "an MHPL call (docs/formats/mhpl-call.md)", "mhpl/police-call.mhpl.json"),
)
async def ingest_mhpl(request: Request, intake: IntakeDep, settings: SettingsDep) -> Response:
    return await answer(request, settings.max_body_bytes, intake.receive_mhpl_call)


@router.post(
    "/ingest/cleo",
    summary="Apply a CLEO case update (docs/formats/cleo.md) as the matching case operation; replies with the case",
    description="Scope `ingest:cleo`. The update's `event` runs the matching case operation ($end-assessment, "
    "$record-contact-attempt, $cn-review, $known-service, $ratify) with its rules; 200 with the case in CLEO's shape, "
    "409 with an OperationOutcome when a rule refuses it (nothing changed).",
    openapi_extra=body_of("application/json", "a CLEO case update (docs/formats/cleo.md)", "cleo/consultation-registered.update.json"),
)
async def ingest_cleo(request: Request, settings: SettingsDep) -> Response:
    return await answer(request, settings.max_body_bytes, request.app.state.cleo.receive_update, fhir=False)


@router.get("/export/cleo/{task_id}", summary="A CAS case in CLEO's shape (docs/formats/cleo.md): notes flow both ways (CAS-13)")
def export_cleo(task_id: str, session: SessionDep) -> Response:
    return JSONResponse(export_case(session, task_id))


@router.post(
    "/ingest/pcmis",
    summary="A PCMIS contact export (CSV, docs/formats/pcmis-contacts.md): every row's outcome in the reply",
    description="Scope `ingest:pcmis`. Each row becomes an Encounter on the Talking Therapies episode it names (TT clocks "
    "move with it). 200 with every row's outcome (stored, duplicate, refused and why); at most IAP_BATCH_MAX_ROWS rows.",
    openapi_extra=body_of("text/csv", "a PCMIS contact export (docs/formats/pcmis-contacts.md)", "pcmis/contacts.csv"),
)
async def ingest_pcmis(request: Request, settings: SettingsDep) -> Response:
    return await answer_batch(request, settings, request.app.state.pcmis)


@router.post(
    "/ingest/systmone",
    summary="A SystmOne template extract (CSV, docs/formats/systmone-extract.md): every row's outcome",
    description="Scope `ingest:systmone`. Each row becomes an Encounter on the primary care episode it names (PC clocks "
    "move with it). 200 with every row's outcome; at most IAP_BATCH_MAX_ROWS rows.",
    openapi_extra=body_of("text/csv", "a SystmOne template extract (docs/formats/systmone-extract.md)", "systmone/contacts.csv"),
)
async def ingest_systmone(request: Request, settings: SettingsDep) -> Response:
    return await answer_batch(request, settings, request.app.state.systmone)


async def answer_batch(request: Request, settings: Settings, batches: ContactBatches) -> Response:
    """A CSV batch (plain JSON reply): at most IAP_BATCH_MAX_ROWS rows, and no row started once its sender has hung up
    (the rows committed stay committed; sent again, they are duplicates and the rest are taken)."""
    raw = await read_body(request, settings.max_body_bytes)
    gone = threading.Event()

    async def watch() -> None:  # with the body read, the next ASGI message is the disconnect (if before the reply)
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone.set()

    watcher = asyncio.create_task(watch())
    try:
        reply = await in_worker_thread(request, lambda body: batches.receive_batch(body, settings.batch_max_rows, gone.is_set), raw)
    finally:
        watcher.cancel()
    return Response(reply.encoded(), status_code=reply.status, headers=reply.headers, media_type="application/json")


@router.post(
    "/ingest/hl7v2",
    summary="Receive one HL7 v2.4 message (ER7 text, RiO): the reply is its ACK (AA, or AE/AR with MSA-3 and ERR)",
    description="Scope `ingest:hl7v2`. The same intake as the MLLP listener: ADT, REF, MDM and ORU messages from RiO "
    "and other EPRs (read by the sender's profile). The reply is always an ACK (X-HL7-Ack-Code header): AA stored, "
    "AE/AR refused with MSA-3 and ERR; a re-sent control id gets its original ACK.",
    openapi_extra=body_of("x-application/hl7-v2+er7", "one HL7 v2.4 message, ER7 (docs/formats/rio-hl7v2.md)", "rio/adt-a04-register.hl7"),
)
async def ingest_hl7v2(request: Request, settings: SettingsDep) -> Response:
    raw = await read_body(request, settings.max_body_bytes)
    ack = await in_worker_thread(request, request.app.state.hl7.receive, raw)
    code = ack.split(b"\rMSA|", 1)[1][:2].decode() if b"\rMSA|" in ack else "AR"
    return Response(ack, media_type="x-application/hl7-v2+er7", headers={"X-HL7-Ack-Code": code})


@router.post(
    "/fhir/$process-message",
    summary="BaRS: receive a servicerequest-request message Bundle (X-Request-Id and X-Correlation-Id required)",
    description="Scope `ingest:nhs111`. A BaRS message Bundle (MessageHeader, ServiceRequest, Patient, ...) becomes a "
    "CAS queue Task as /ingest/nhs111 does. X-Request-Id and X-Correlation-Id are required and echoed; a re-sent "
    "X-Request-Id gets its original reply; refusals are OperationOutcomes.",
    openapi_extra=body_of(
        "application/fhir+json",
        "a BaRS servicerequest-request message Bundle (docs/formats/bars.md)",
        "nhs111/bars-dx13-self-harm-flag.bundle.json",
    ),
)
async def process_message(request: Request, intake: IntakeDep, settings: SettingsDep) -> Response:
    request_id, correlation_id = request.headers.get("x-request-id"), request.headers.get("x-correlation-id")
    return await answer(request, settings.max_body_bytes, lambda raw: intake.receive_bars(raw, request_id, correlation_id))


@router.api_route("/fhir/$process-message", methods=["GET", "PUT", "PATCH", "DELETE"], include_in_schema=False)
async def process_message_other() -> Response:
    return FhirResponse(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "not-supported", "diagnostics": "$process-message takes POST only"}],
        },
        status_code=405,
        headers={"Allow": "POST"},
    )
