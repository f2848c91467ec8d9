"""The outbox over HTTP: deliveries by status (dead letters included), one delivery with its history, replay."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response

from adapters.jsonparse import parse_json_object
from adapters.problems import GatewayInputError, Kind, Problem
from gateway.api.deps import ClockDep, SessionDep, SettingsDep
from gateway.api.examples import LETTER_REQUEST_EXAMPLE
from gateway.api.ingest import body_of, read_body
from gateway.api.responses import FhirResponse
from gateway.api.search import paging, refuse_unknown, split_list
from gateway.letters.outbox import store
from gateway.letters.outbox.letters import request_letter
from gateway.platform.security.principal import SYSTEM, current_principal
from gateway.platform.store.models import OutboxRow

__all__ = ["router"]

router = APIRouter()


@router.get(
    "/outbox",
    summary="Letter deliveries, newest first: status (pending, sending, sent, delivered, failed, dead, withheld, superseded), patient",
)
def outbox(request: Request, session: SessionDep) -> Response:
    params = request.query_params
    refuse_unknown(params.keys(), {"status", "patient", "_count", "_offset"}, "outbox")
    statuses = split_list(params.get("status"))
    for status in statuses or []:
        if status not in store.STATUSES:
            raise GatewayInputError(Problem(Kind.VALUE, "status", f"unknown status {status[:20]!r}; one of {list(store.STATUSES)}"))
    count, offset = paging(params)
    rows, total = store.list_rows(session, statuses, params.get("patient"), count, offset)
    return JSONResponse({"total": total, "count": len(rows), "offset": offset, "entries": [store.row_json(r) for r in rows]})


@router.get("/outbox/{delivery_id}", summary="One delivery and everything that happened to it (attempts, acknowledgements, decisions)")
def delivery(delivery_id: str, session: SessionDep) -> Response:
    row = session.get(OutboxRow, delivery_id[:64])
    if row is None:
        raise GatewayInputError(Problem(Kind.NOT_FOUND, "id", f"no delivery {delivery_id[:64]}"))
    return JSONResponse(store.row_json(row) | {"events": store.events_json(session, row.id)})


@router.post(
    "/outbox/{delivery_id}/$replay",
    summary="Send a delivery again from the stored letter (dead, failed, withheld or sent)",
    description="Scope `outbox:operate`. No body. The delivery is queued again at once, the replay recorded with who asked "
    "(the client, and X-User when given); 409 for one already on its way or superseded, 404 for an unknown id.",
)
def replay(delivery_id: str, request: Request, clock: ClockDep) -> Response:
    client = (current_principal() or SYSTEM).name  # the authenticated client; X-User names the person at an operator UI
    user = request.headers.get("x-user")
    who = f"{client} ({user[:40]})" if user else client
    with request.app.state.sessions.begin() as session:
        try:
            row = store.replay(session, delivery_id[:64], who[:64], clock.now())
        except ValueError as exc:
            raise GatewayInputError(Problem(Kind.CONFLICT, "status", str(exc))) from None
        if row is None:
            raise GatewayInputError(Problem(Kind.NOT_FOUND, "id", f"no delivery {delivery_id[:64]}"))
        body = store.row_json(row)
    return JSONResponse(body)


@router.post(
    "/fhir/CommunicationRequest",
    status_code=201,
    summary="Request a letter (docs/letters.md): stored with its document, PDF and deliveries; 201 with the letter's DocumentReference",
    description="Scope `letters:write`. The letter (a FHIR document and its PDF) and one delivery per recipient are stored "
    "in one transaction; the outbox worker sends them (MESH, FHIR push, print folder). 422 OperationOutcome naming each "
    "failing element; nothing is stored then.",
    openapi_extra=body_of(
        "application/fhir+json",
        "a FHIR CommunicationRequest (docs/letters.md)",
        examples={"progress": ("TT-14 progress letter", LETTER_REQUEST_EXAMPLE)},
    ),
)
async def letter_request(request: Request, settings: SettingsDep, clock: ClockDep) -> Response:
    body = parse_json_object(await read_body(request, settings.max_body_bytes), "CommunicationRequest")

    def store_letter() -> dict[str, Any]:
        with request.app.state.sessions.begin() as session:
            return request_letter(session, body, clock.now(), (current_principal() or SYSTEM).service_id)  # a bound client's own

    letter = await run_in_threadpool(store_letter)
    return FhirResponse(
        letter, status_code=201, headers={"Location": f"/fhir/DocumentReference/{letter['id']}/_history/{letter['meta']['versionId']}"}
    )
