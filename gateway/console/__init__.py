"""The operator console: server-rendered pages under /console/ on the gateway's own server (issue 36).

One router package: `gate` (sign-in session in place of a bearer credential, the same scope table and audit),
`sessions` (the server-side session store), `web` (templates, forms, CSRF), and a module of pages per area. The
NHS.UK frontend's compiled CSS and JS are vendored under static/nhsuk/ (static/nhsuk/VERSION.md): nothing is
fetched from another site at run time.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from starlette.responses import RedirectResponse
from starlette.staticfiles import StaticFiles

from gateway.console import pages_auth, pages_cas, pages_dashboard, pages_letters, pages_messages, pages_reports, pages_rules

__all__ = ["install_console"]

STATIC = Path(__file__).parent / "static"


def install_console(app: FastAPI) -> None:
    """Serve the console's pages and its static files (CSS, JS, icons) on `app`."""
    router = APIRouter()
    for pages in (pages_auth, pages_dashboard, pages_messages, pages_cas, pages_letters, pages_reports, pages_rules):
        router.include_router(pages.router)
    router.add_api_route("/console", lambda: RedirectResponse("/console/", status_code=308), include_in_schema=False)
    app.include_router(router)
    app.mount("/console/static", StaticFiles(directory=STATIC), name="console-static")
