"""What every console page shares: the templates, the signed-in person, forms and their CSRF token, errors as pages."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import Request
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.responses import HTMLResponse, Response

from adapters.problems import GatewayInputError, Kind, Problem
from gateway.api.ingest import read_body
from gateway.console.sessions import ConsoleLogin
from gateway.platform.security.principal import Principal
from gateway.platform.security.scopes import check_scopes, rule_for

__all__ = ["PageRoute", "page", "login_of", "read_form", "check_csrf", "TEMPLATES", "HEADERS"]

TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
# no cache of pages holding patient data; nothing framed; no script, style or image but the console's own
HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
}
_FORM_LIMIT = 16_384

# the pages in the header's menu, each shown to whom the scope table lets see it
NAV = (
    ("/console/", "Dashboard"),
    ("/console/messages", "Messages"),
    ("/console/quarantine", "Quarantine"),
    ("/console/queue", "CAS queue"),
    ("/console/waitlist", "Wait list"),
    ("/console/letters", "Letters"),
    ("/console/audit", "Audit"),
    ("/console/rules", "Rules"),
)


def login_of(request: Request) -> ConsoleLogin | None:
    """The signed-in session the console gate found for this request (None on the public pages)."""
    login = request.scope.get("state", {}).get("console")
    return login if isinstance(login, ConsoleLogin) else None


def may_see(principal: Principal, path: str, method: str = "GET") -> bool:
    """The scope table's answer for this person and page (the gate asks the same)."""
    return check_scopes(principal.scopes, rule_for(method, path))


def page(request: Request, template: str, status_code: int = 200, **values: Any) -> HTMLResponse:
    """A page from its template, with the header's menu, the person signed in and their CSRF token."""
    login = login_of(request)
    principal = login.principal if login else None
    nav = [(href, label) for href, label in NAV if principal and may_see(principal, href)]
    html = TEMPLATES.get_template(template).render(
        request_path=request.url.path,
        principal=principal,
        csrf=login.csrf if login else "",
        nav=nav,
        may_see=(lambda path, method="GET": bool(principal and may_see(principal, path, method))),
        **values,
    )
    return HTMLResponse(html, status_code=status_code, headers=HEADERS)


async def read_form(request: Request) -> dict[str, str]:
    """A urlencoded form's fields (each's first value); GatewayInputError for a body too large or not a form."""
    raw = await read_body(request, _FORM_LIMIT)
    try:
        fields = parse_qs(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise GatewayInputError(Problem(Kind.STRUCTURE, "form", "not a form")) from None
    return {name: values[0] for name, values in fields.items()}


def check_csrf(expected: str | None, form: dict[str, str]) -> None:
    """Every form carries the session's CSRF token; one without it (or with another) is refused, 403."""
    given = form.get("csrf", "")
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        raise GatewayInputError(Problem(Kind.FORBIDDEN, "csrf", "the form's token is missing or stale: reload the page and try again"))


class PageRoute(APIRoute):
    """A console route: a refused request (GatewayInputError) is answered with a page saying why, not FHIR JSON."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except GatewayInputError as error:
                return page(request, "problem.html", error.http_status, problems=error.problems)

        return answer
