"""The console's security gate: the app-wide gate's rules, with a signed-in session in place of a bearer credential.

`gateway.api.security.SecurityMiddleware` hands every /console/ request whose scope-table row is not public to
`console_gate`. It finds the session from the cookie (none, idle or revoked: to the sign-in page), acts as the
client signed in (so reads are bound to its service as an API key's are: gateway.platform.store.visibility), asks the same
scope table (default deny: a console path with no row needs `admin`) and audits the page view as the API audits
a read, naming what the page showed (`gateway.platform.audit.note`).
"""

from __future__ import annotations

import time
from datetime import timedelta
from http.cookies import SimpleCookie
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.console.sessions import resume_session
from gateway.console.web import page
from gateway.platform.audit import act_as, audit_context, outcome_of, record, request_context
from gateway.platform.metrics import HTTP_REQUESTS
from gateway.platform.security.scopes import check_scopes, rule_for
from gateway.platform.store.db import store_unavailable

__all__ = ["console_gate", "COOKIE", "SIGN_IN"]

COOKIE = "iap_console"
SIGN_IN = "/console/sign-in"


def session_cookie(scope: Scope) -> str | None:
    """The console session's cookie value, if the browser sent one."""
    for name, value in scope["headers"]:
        if name == b"cookie":
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(value.decode("latin-1"))
            except Exception:  # a malformed Cookie header opens no session
                return None
            if COOKIE in jar:
                return jar[COOKIE].value
    return None


async def console_gate(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Authenticate (session), authorise (scope table), audit one console request, then serve it."""
    state = scope["app"].state
    method, path = scope["method"], scope["path"]
    rule = rule_for(method, path)
    context = request_context(scope, rule.interaction, state.clock)
    started = time.perf_counter()
    with audit_context(context):
        idle = timedelta(minutes=state.settings.console_idle_minutes)
        login = await run_in_threadpool(resume_session, state.sessions, session_cookie(scope), state.clock.now(), idle)
        if login is None:
            await run_in_threadpool(record, state.sessions, context, "4", "console: not signed in (or the session is over)")
            HTTP_REQUESTS.labels(route=rule.pattern, method=method, status="303").inc()
            target = SIGN_IN + ("?next=" + quote(path, safe="/") if method == "GET" else "")
            await RedirectResponse(target, status_code=303)(scope, receive, send)
            return
        act_as(context, login.principal)
        scope.setdefault("state", {})["console"] = login
        if not check_scopes(login.principal.scopes, rule):
            reason = f"needs scope {' or '.join(rule.scopes)}"
            await run_in_threadpool(record, state.sessions, context, "4", f"HTTP 403: {reason}")
            HTTP_REQUESTS.labels(route=rule.pattern, method=method, status="403").inc()
            refused = page(Request(scope), "refused.html", 403, reason=reason)
            await refused(scope, receive, send)
            return
        answered = False

        async def audited_send(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start" and not answered:
                answered = True
                if not context.recorded:
                    status = message["status"]
                    await run_in_threadpool(record, state.sessions, context, outcome_of(status), f"HTTP {status} (console)")
                HTTP_REQUESTS.labels(route=rule.pattern, method=method, status=str(message["status"])).inc()
            await send(message)

        try:
            await app(scope, receive, audited_send)
        except Exception as error:
            if not answered and not context.recorded:
                status = 503 if store_unavailable(error) else 500
                await run_in_threadpool(
                    record, state.sessions, context, "8", f"HTTP {status} (console, {time.perf_counter() - started:.1f} s)"
                )
            raise
