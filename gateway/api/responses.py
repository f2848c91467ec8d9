"""FHIR JSON responses and the exception handlers that turn every error into an OperationOutcome."""

from __future__ import annotations

import uuid
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from adapters.problems import GatewayInputError, Kind, Problem
from fhir_mapping.replies import operation_outcome, server_error_outcome
from gateway.security.scopes import rule_for
from gateway.store.jsontext import dumps

__all__ = ["FhirResponse", "install_error_handlers", "FHIR_JSON", "SenderGone"]

FHIR_JSON = "application/fhir+json"
log = structlog.get_logger("iap.api")


def _route(request: Request) -> str:
    """The route's pattern for the logs, never the path itself (a path can hold an identifier: /fhir/Patient/<nhs number>)."""
    return rule_for(request.method, request.url.path).pattern


class SenderGone(Exception):
    """The client disconnected while sending its body (not a server fault: logged at info, no 500)."""


class FhirResponse(Response):
    media_type = FHIR_JSON

    def render(self, content: Any) -> bytes:
        return dumps(content).encode("utf-8")


def _outcome_response(status: int, problems: list[Problem], headers: dict[str, str] | None = None) -> FhirResponse:
    return FhirResponse(operation_outcome(problems), status_code=status, headers=headers)


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

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> Response:
        reference = str(uuid.uuid4())
        log.error("request.crashed", route=_route(request), reference=reference, error=type(exc).__name__)
        return FhirResponse(server_error_outcome(reference), status_code=500)
