"""The gateway's plain ASGI middlewares share this: they see HTTP requests, everything else passes through."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["HttpMiddleware"]


class HttpMiddleware:
    """A pure ASGI middleware for HTTP requests (lifespan and the rest go straight to the app): `http()` handles one.

    Plain ASGI rather than `@app.middleware("http")` (BaseHTTPMiddleware), which runs every request through an extra
    task and a streamed copy of the reply: ~5% of an ingest (bench/README.md).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.http(scope, receive, send)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError
