"""The one app-wide gate: authenticate the bearer credential, authorise by the scope table, audit, count.

A pure ASGI middleware, so it sees every request (including paths no route serves: default-deny
means an unknown path needs `admin`, so nothing about the API is learnt without a credential).
Unauthenticated -> 401, not allowed -> 403, both as OperationOutcome, both audited. Requests that
pass are audited too: with their change when they make one (gateway.platform.audit's transaction hooks),
otherwise just before the reply is sent. Also here: the OAuth 2.0 token endpoint (signed JWT
client assertions, NHS England's pattern).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import parse_qs, parse_qsl

import structlog
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

from adapters.problems import GatewayInputError, Kind, Problem
from fhir_mapping.replies import operation_outcome
from gateway.api.asgi import HttpMiddleware
from gateway.api.deps import SettingsDep
from gateway.api.ingest import read_body
from gateway.api.responses import FhirResponse
from gateway.console.gate import console_gate
from gateway.platform.audit import EVENT_LOGIN, AuditContext, act_as, audit_context, outcome_of, record, request_context
from gateway.platform.metrics import AUTH_REFUSALS, CREDENTIAL_FAILURES, HTTP_REQUESTS, MAPPING_SECONDS, MESSAGES
from gateway.platform.security.credentials import ASSERTION_TYPE, AssertionRefused
from gateway.platform.security.guessing import TooManyFailures
from gateway.platform.security.scopes import RouteRule, check_scopes, rule_for
from gateway.platform.store.db import store_unavailable

__all__ = ["SecurityMiddleware", "router"]

log = structlog.get_logger("iap.security")
router = APIRouter()
_TOKEN_FORM_LIMIT = 16_384


class SecurityMiddleware(HttpMiddleware):
    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        rule = rule_for(method, path)
        if rule.public:
            await self.app(scope, receive, send)
            return
        if path == "/console" or path.startswith("/console/"):  # the operator console: a signed-in session, same table
            await console_gate(self.app, scope, receive, send)
            return
        state = scope["app"].state
        context = request_context(scope, rule.interaction, state.clock)
        started = time.perf_counter()
        with audit_context(context):
            credential = _bearer(scope)
            try:
                if credential:
                    state.authenticator.precheck(credential, context.address)  # a blocked guesser takes no thread
                principal = await run_in_threadpool(state.authenticator.authenticate, credential, context.address) if credential else None
            except TooManyFailures as limited:  # no check made: answered 429 at once
                await self._limited(state, rule, context, limited, scope, receive, send)
                return
            except Exception as error:  # the credential could not be checked (the store unreachable): counted, answered outside
                _count(rule, method, _failure(error)[0], [], time.perf_counter() - started)
                raise
            if principal is None:
                if credential is not None:
                    CREDENTIAL_FAILURES.labels(outcome="not-valid").inc()
                reason = "no credential" if credential is None else "credential not valid"
                await self._refuse(state, rule, context, 401, reason, scope, receive, send)
                return
            act_as(context, principal)
            if not check_scopes(principal.scopes, rule):
                await self._refuse(state, rule, context, 403, f"needs scope {' or '.join(rule.scopes)}", scope, receive, send)
                return
            answered = False

            async def audited_send(message: Message) -> None:
                nonlocal answered
                if message["type"] == "http.response.start" and not answered:
                    answered = True
                    status = message["status"]
                    if not context.recorded and not context.unaudited:
                        resent = any(name == b"x-duplicate-of" for name, _ in message.get("headers", []))
                        desc = f"HTTP {status}" + (" (re-send answered from the store)" if resent else "")
                        await run_in_threadpool(record, state.sessions, context, outcome_of(status), desc)
                    _count(rule, method, status, message.get("headers", []), time.perf_counter() - started)
                await send(message)

            try:
                if (where := _nul_in_url(scope)) is not None:  # no id, code or search value holds one; PostgreSQL text cannot
                    problem = Problem(Kind.VALUE, where, "holds a NUL (%00), which no id, code or search value can")
                    await FhirResponse(operation_outcome([problem]), status_code=400)(scope, receive, audited_send)
                    return
                await self.app(scope, receive, audited_send)
            except Exception as error:
                if not answered and not context.recorded:  # answered outside this middleware (AnswerStoreOutages, the 500 handler)
                    status, what = _failure(error)
                    _count(rule, method, status, [], time.perf_counter() - started)
                    # a store that failed the request may fail its AuditEvent too: then that error is the one answered
                    await run_in_threadpool(record, state.sessions, context, "8", f"HTTP {status} ({what})")
                raise

    async def _refuse(
        self, state: Any, rule: RouteRule, context: AuditContext, status: int, reason: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        who = context.client
        log.info("request.refused", route=rule.pattern, method=scope["method"], status=status, reason=reason, client=who)
        AUTH_REFUSALS.labels(reason="unauthenticated" if status == 401 else "forbidden").inc()
        await run_in_threadpool(record, state.sessions, context, "4", f"HTTP {status}: {reason}")
        _count(rule, scope["method"], status, [], 0.0)
        if status == 401:
            problem = Problem(
                Kind.UNAUTHENTICATED, "header:Authorization", f"{reason}: send 'Authorization: Bearer <API key or access token>'"
            )
            headers = {"WWW-Authenticate": 'Bearer realm="iap-gateway"' + (', error="invalid_token"' if reason != "no credential" else "")}
        else:
            problem = Problem(Kind.FORBIDDEN, "header:Authorization", f"client {who!r} may not {scope['method']} {rule.pattern}: {reason}")
            headers = {}
        await FhirResponse(operation_outcome([problem]), status_code=status, headers=headers)(scope, receive, send)

    async def _limited(
        self, state: Any, rule: RouteRule, context: AuditContext, limited: TooManyFailures, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """429 with Retry-After: too many failed credential checks from this address or for this API key id. Counted
        every time; logged and audited once per window (a write per refused guess would hand guessers the store)."""
        AUTH_REFUSALS.labels(reason="rate-limited").inc()
        CREDENTIAL_FAILURES.labels(outcome="rate-limited").inc()
        if limited.first:
            log.warning(
                "request.rate_limited", route=rule.pattern, method=scope["method"], what=limited.what, retry_after=limited.retry_after
            )
            await run_in_threadpool(record, state.sessions, context, "4", f"HTTP 429: {limited} (further refusals this window are counted)")
        _count(rule, scope["method"], 429, [], 0.0)
        await asyncio.sleep(state.authenticator.failures.refusal_delay)  # on the event loop: holds no thread
        issue = {
            "severity": "error",
            "code": "throttled",
            "diagnostics": f"{limited}: try again in {limited.retry_after} s",
            "expression": ["header:Authorization"],
        }
        headers = {"Retry-After": str(limited.retry_after), "WWW-Authenticate": 'Bearer realm="iap-gateway", error="invalid_token"'}
        await FhirResponse({"resourceType": "OperationOutcome", "issue": [issue]}, status_code=429, headers=headers)(scope, receive, send)


def _failure(error: Exception) -> tuple[int, str]:
    """The status a request that raised `error` is answered with (outside this middleware), and what it was."""
    return (503, "store unavailable") if store_unavailable(error) else (500, "internal error")


def _bearer(scope: Scope) -> str | None:
    """The bearer credential; "" (not valid) for another scheme, none, or one holding a NUL (no credential does)."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, credential = value.decode("latin-1").partition(" ")
            return credential.strip() if scheme.lower() == "bearer" and "\x00" not in credential else ""
    return None


def _nul_in_url(scope: Scope) -> str | None:
    """Where the request's path or query holds a NUL: "url", or the query parameter's name."""
    if "\x00" in scope["path"]:
        return "url"
    query = scope.get("query_string", b"")
    if b"%00" not in query and b"\x00" not in query:
        return None
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if "\x00" in name or "\x00" in value:
            return name.replace("\x00", "%00") or "url"
    return None


def _count(rule: RouteRule, method: str, status: int, headers: list[tuple[bytes, bytes]], elapsed: float) -> None:
    HTTP_REQUESTS.labels(route=rule.pattern, method=method, status=str(status)).inc()
    if rule.source is None:
        return
    names = {k.lower(): v for k, v in headers}
    if status in (401, 403):
        outcome = "unauthorised"
    elif b"x-duplicate-of" in names or status == 409:
        outcome = "duplicate"
    elif status == 503:  # the store unavailable or the gateway busy: the sender was told to send it again
        outcome = "unavailable"
    elif status >= 500:
        outcome = "error"
    elif status >= 400 or names.get(b"x-hl7-ack-code", b"AA") != b"AA":
        outcome = "refused"
    else:
        outcome = "accepted"
    MESSAGES.labels(source=rule.source, outcome=outcome).inc()
    if outcome in ("accepted", "duplicate"):
        MAPPING_SECONDS.labels(source=rule.source).observe(elapsed)


@router.post(
    "/oauth2/token",
    summary="Exchange a signed JWT client assertion (RS512, private_key_jwt) for an access token (OAuth 2.0 client credentials)",
    description="No credential needed: the assertion is the credential. A form body (grant_type=client_credentials, "
    "client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer, client_assertion=<JWT signed with a "
    "key in the client's JWKS; iss = sub = its client id, aud = this URL>). 200 with a Bearer access token (iapt_...) "
    "for IAP_TOKEN_TTL_SECONDS; 400/401 with an OAuth error (invalid_request, invalid_client, ...). docs/security.md.",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "required": ["grant_type", "client_assertion_type", "client_assertion"],
                        "properties": {
                            "grant_type": {"type": "string", "enum": ["client_credentials"]},
                            "client_assertion_type": {"type": "string", "enum": [ASSERTION_TYPE]},
                            "client_assertion": {"type": "string"},
                        },
                    }
                }
            },
        }
    },
)
async def token(request: Request, settings: SettingsDep) -> Response:
    state = request.app.state
    client = request.client
    context = AuditContext(None, client.host if client else None, "POST /oauth2/token", "login", state.clock, event_type=EVENT_LOGIN)
    with audit_context(context):
        try:
            raw = await read_body(request, _TOKEN_FORM_LIMIT)
            form = parse_qs(raw.decode("ascii", "replace"), keep_blank_values=True, max_num_fields=10)
        except (ValueError, GatewayInputError):  # empty, too large or not a form: answered as OAuth's invalid_request
            form = {}
        fields = {name: values[0] for name, values in form.items() if len(values) == 1}
        audience = settings.token_audience or str(request.url.replace(query=None, fragment=None))
        try:
            if fields.get("grant_type") != "client_credentials":
                raise AssertionRefused("unsupported_grant_type", "grant_type must be client_credentials")
            if fields.get("client_assertion_type") != ASSERTION_TYPE:
                raise AssertionRefused("invalid_request", f"client_assertion_type must be {ASSERTION_TYPE}")
            if not fields.get("client_assertion"):
                raise AssertionRefused("invalid_request", "client_assertion is missing")
            issued = await run_in_threadpool(state.authenticator.exchange_assertion, fields["client_assertion"], audience)
        except AssertionRefused as refused:
            log.info("token.refused", error=refused.error, reason=str(refused))
            AUTH_REFUSALS.labels(reason="token").inc()
            await run_in_threadpool(record, state.sessions, context, "4", f"token refused: {refused.error}: {refused}")
            status = 401 if refused.error == "invalid_client" else 400
            return JSONResponse({"error": refused.error, "error_description": str(refused)}, status_code=status, headers=_NO_STORE)
        act_as(context, issued.principal)
        await run_in_threadpool(record, state.sessions, context, "0", "access token issued")
        log.info("token.issued", client=issued.principal.name, expires_in=issued.expires_in)
        body = {"access_token": issued.token, "expires_in": issued.expires_in, "token_type": "Bearer", "issued_at": int(time.time() * 1000)}
        return JSONResponse(body, headers=_NO_STORE)


_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
