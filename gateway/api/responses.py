"""FHIR JSON responses and the exception handlers that turn every error into an OperationOutcome."""

from __future__ import annotations

import uuid
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from adapters.problems import GatewayInputError, Kind, Problem
from fhir_mapping.replies import operation_outcome, server_error_outcome
from gateway.api.asgi import HttpMiddleware
from gateway.platform.audit import current_audit
from gateway.platform.security.scopes import rule_for
from gateway.platform.store.db import store_unavailable
from gateway.platform.store.jsontext import dumps

__all__ = [
    "FhirResponse",
    "install_error_handlers",
    "FHIR_JSON",
    "SenderGone",
    "Busy",
    "AnswerStoreOutages",
    "RETRY_AFTER_SECONDS",
    "unavailable",
]

FHIR_JSON = "application/fhir+json"
log = structlog.get_logger("iap.api")

# How long a sender told 503 (the store unavailable, the gateway not ready) is asked to wait before it sends again
RETRY_AFTER_SECONDS = 5


def _route(request: Request) -> str:
    """The route's pattern for the logs, never the path itself (a path can hold an identifier: /fhir/Patient/<nhs number>)."""
    return rule_for(request.method, request.url.path).pattern


class SenderGone(Exception):
    """The client disconnected while sending its body (not a server fault: logged at info, no 500)."""


class Busy(Exception):
    """A message waited `seconds` for its turn (IAP_INGEST_QUEUE_SECONDS) and did not get it: answered 503 with
    Retry-After, so that the sender sends it again later."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no ingest slot within {seconds:g} s")
        self.seconds = seconds


class FhirResponse(Response):
    media_type = FHIR_JSON

    def render(self, content: Any) -> bytes:
        return dumps(content).encode("utf-8")


def _outcome_response(status: int, problems: list[Problem], headers: dict[str, str] | None = None) -> FhirResponse:
    return FhirResponse(operation_outcome(problems), status_code=status, headers=headers)


def unavailable(problems: list[Problem]) -> FhirResponse:
    """503 with `Retry-After`: the sender should send the same request again later (BaRS senders retry a 503,
    not a 500)."""
    return _outcome_response(503, problems, {"Retry-After": str(RETRY_AFTER_SECONDS)})


class AnswerStoreOutages(HttpMiddleware):
    """A request the store could not serve just now (`gateway.platform.store.db.store_unavailable`: unreachable, restarting,
    a lock or statement timeout, no pooled connection) is answered **503** `REC_SERVICE_UNAVAILABLE` `transient`
    with `Retry-After`, not 500: a BaRS sender retries a 503 and does not retry a 500 (BaRS error handling), so a
    referral sent during a database restart is sent again rather than lost. Sending again is safe: a message that
    was taken after all (a COMMIT whose reply the connection lost) is answered as a re-send, never stored twice.

    Logged once as `request.unavailable` with the reference the sender is given and the error's type, without a
    traceback (an outage would otherwise write one per request). Outside the security gate, so a credential
    check that cannot reach the store is answered the same way. Any other error goes on to the 500 handler.
    """

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        except Exception as error:
            if started or not store_unavailable(error):
                raise
            reference = str(uuid.uuid4())
            route = rule_for(scope["method"], scope["path"]).pattern
            log.warning("request.unavailable", route=route, reference=reference, error=type(error).__name__)
            message = (
                f"the store is unavailable just now; send the request again after {RETRY_AFTER_SECONDS} s"
                f" (a message already taken is answered as a re-send, never stored twice); reference {reference}"
            )
            await unavailable([Problem(Kind.UNAVAILABLE, "", message)])(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayInputError)
    async def _input_error(request: Request, exc: GatewayInputError) -> Response:
        log.info(
            "message.refused",
            route=_route(request),
            stage=exc.stage,
            status=exc.http_status,
            elements=[p.element for p in exc.problems if p.is_error],
        )
        return _outcome_response(exc.http_status, exc.problems)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        kind = {404: Kind.NOT_FOUND, 413: Kind.TOO_LARGE}.get(exc.status_code, Kind.INVALID)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            message = f"method {request.method} is not allowed here"
            return FhirResponse(
                {
                    "resourceType": "OperationOutcome",
                    "issue": [{"severity": "error", "code": "not-supported", "diagnostics": message}],
                },
                status_code=405,
                headers=headers,
            )
        return _outcome_response(exc.status_code, [Problem(kind, request.url.path, str(exc.detail))], headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        problems = [Problem(Kind.VALUE, ".".join(str(p) for p in err["loc"][1:]) or "request", err["msg"]) for err in exc.errors()]
        return _outcome_response(400, problems)

    @app.exception_handler(SenderGone)
    async def _sender_gone(request: Request, exc: SenderGone) -> Response:
        log.info("request.abandoned", route=_route(request))
        return Response(status_code=400)  # the client has gone; this is never read

    @app.exception_handler(Busy)
    async def _busy(request: Request, exc: Busy) -> Response:
        context = current_audit()
        log.warning("request.busy", route=_route(request), waited_seconds=exc.seconds, client=context and context.client)  # not audited
        message = (
            f"the gateway is busy: the message waited {exc.seconds:g} s for its turn and was not taken; send it again after"
            f" {RETRY_AFTER_SECONDS} s"
        )
        return unavailable([Problem(Kind.UNAVAILABLE, "", message)])

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> Response:
        reference = str(uuid.uuid4())
        log.error("request.crashed", route=_route(request), reference=reference, error=type(exc).__name__)
        return FhirResponse(server_error_outcome(reference), status_code=500)
