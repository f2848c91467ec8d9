"""Signing in and out of the console: a person's own API key, exchanged for a server-side session."""

from __future__ import annotations

import secrets
from datetime import timedelta

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse, Response

from adapters.problems import GatewayInputError
from gateway.console.gate import COOKIE, SIGN_IN, session_cookie
from gateway.console.sessions import end_session, resume_session, start_session
from gateway.console.web import HEADERS, PageRoute, check_csrf, page, read_form
from gateway.platform.audit import EVENT_LOGIN, AuditContext, act_as, audit_context, record
from gateway.platform.security.credentials import API_KEY_PREFIX
from gateway.platform.security.guessing import TooManyFailures

__all__ = ["router"]

router = APIRouter(route_class=PageRoute)
_SIGN_IN_CSRF = "iap_console_sign_in"  # before a session there is no session token: the form's is also a cookie (double submit)
_LOCAL = ("localhost", "127.0.0.1", "::1")


def _safe_next(target: str | None) -> str:
    """Where to go after signing in: a console path only (never another site, never a query string)."""
    if target and target.startswith("/console/") and "//" not in target and "?" not in target and "\\" not in target:
        return target
    return "/console/"


def _set_cookie(request: Request, response: Response, name: str, value: str, max_age: int | None = None) -> None:
    """HttpOnly, SameSite=Strict, only under /console; Secure everywhere but on this machine (plain http://localhost)."""
    secure = request.url.hostname not in _LOCAL
    response.set_cookie(name, value, max_age=max_age, path="/console", secure=secure, httponly=True, samesite="strict")


def _sign_in_form(request: Request, status: int = 200, error: str | None = None, target: str | None = None) -> Response:
    token = secrets.token_urlsafe(32)
    response = page(request, "sign_in.html", status, sign_in_csrf=token, next=_safe_next(target), error=error)
    _set_cookie(request, response, _SIGN_IN_CSRF, token, max_age=3600)
    return response


@router.get("/console/sign-in", include_in_schema=False)
def sign_in_form(request: Request) -> Response:
    return _sign_in_form(request, target=request.query_params.get("next"))


@router.post("/console/sign-in", include_in_schema=False)
async def sign_in(request: Request) -> Response:
    """Check the API key as the API would (same failure limits), then start a session and set its cookie."""
    state = request.app.state
    form = await read_form(request)
    try:
        check_csrf(request.cookies.get(_SIGN_IN_CSRF), form)
    except GatewayInputError:
        return _sign_in_form(request, 403, "The form was out of date: sign in again", form.get("next"))
    key = form.get("api_key", "").strip()
    address = request.client.host if request.client else None
    context = AuditContext(None, address, "POST /console/sign-in", "login", state.clock, event_type=EVENT_LOGIN)
    with audit_context(context):
        principal = None
        try:
            if key.startswith(API_KEY_PREFIX + "_"):  # an API key only: an access token is a system's, not a person's
                state.authenticator.precheck(key, address)
                principal = await run_in_threadpool(state.authenticator.authenticate, key, address)
        except TooManyFailures as limited:
            await run_in_threadpool(record, state.sessions, context, "4", f"console sign-in refused: {limited}")
            return _sign_in_form(request, 429, f"Too many failed attempts: try again in {limited.retry_after} seconds", form.get("next"))
        if principal is None:
            await run_in_threadpool(record, state.sessions, context, "4", "console sign-in refused: API key not valid")
            return _sign_in_form(request, 401, "Enter a valid API key", form.get("next"))
        act_as(context, principal)
        idle = timedelta(minutes=state.settings.console_idle_minutes)
        secret, _ = await run_in_threadpool(start_session, state.sessions, principal, state.clock.now(), idle)
        await run_in_threadpool(record, state.sessions, context, "0", "console session started")
    response = RedirectResponse(_safe_next(form.get("next")), status_code=303, headers=HEADERS)
    _set_cookie(request, response, COOKIE, secret)  # a session cookie: gone when the browser closes, and idle-limited here
    response.delete_cookie(_SIGN_IN_CSRF, path="/console")
    return response


@router.post("/console/sign-out", include_in_schema=False)
async def sign_out(request: Request) -> Response:
    """End the session (the store forgets it) and clear the cookie; the form's token must be the session's."""
    state, secret = request.app.state, session_cookie(request.scope)
    idle = timedelta(minutes=state.settings.console_idle_minutes)
    login = await run_in_threadpool(resume_session, state.sessions, secret, state.clock.now(), idle)
    if login is not None:
        check_csrf(login.csrf, await read_form(request))
    await run_in_threadpool(end_session, state.sessions, secret)
    response = RedirectResponse(SIGN_IN, status_code=303, headers=HEADERS)
    response.delete_cookie(COOKIE, path="/console")
    return response
