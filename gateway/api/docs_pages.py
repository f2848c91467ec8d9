"""/docs (Swagger UI) and /redoc (ReDoc) with their assets served by the gateway itself, not a public CDN.

On HSCN and other closed networks a CDN is out of reach and FastAPI's default pages are blank. The assets
(swagger-ui-dist's bundle and CSS, ReDoc's standalone bundle, a favicon) come from the `fastapi-offline`
package (PyPI, MIT; it refreshes them from npm at each release), pinned in pyproject.toml: installed with the
gateway, never fetched at run time. Nothing else is loaded from elsewhere: no Google Fonts for ReDoc, and
Swagger UI's online validator badge is off.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

__all__ = ["ASSETS", "ASSETS_URL", "add_docs_pages"]

ASSETS = Path(fastapi_offline.__file__).parent / "static"
ASSETS_URL = "/docs/assets"  # under /docs/**: public, as the pages are (gateway.platform.security.scopes)
_REDIRECT_URL = "/docs/oauth2-redirect"


def add_docs_pages(app: FastAPI) -> None:
    """Serve /docs, /docs/oauth2-redirect, /redoc and /docs/assets/* on `app` (made with docs_url=redoc_url=None)."""
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
            oauth2_redirect_url=_REDIRECT_URL,
            swagger_ui_parameters={"validatorUrl": None},  # else a badge image from validator.swagger.io
        )

    @app.get(_REDIRECT_URL, include_in_schema=False)
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
