"""FHIR REST conventions, in one ASGI middleware (outside the security gate). Under /fhir:

- the reply format: JSON only. `_format` or `Accept` asking for anything else (XML) is answered 406 with an
  OperationOutcome (BaRS `REC_NOT_ACCEPTABLE`), never a 200 in a format the client did not ask for;
- `POST [base]/{type}/_search` with a form-encoded body is the search `GET [base]/{type}?{query}&{body}` (R4 search),
  turned into that GET before the security gate, so it is scoped, audited and answered as the GET is;
And on every route:
- `Location` is absolute (`[base]/{type}/{id}/_history/{vid}`), whichever route wrote it;
- `Prefer: return=minimal` on a create: the 201 with its headers (Location, ETag) and no body.
"""

from __future__ import annotations

import asyncio
import re

from starlette.datastructures import URL, Headers, QueryParams
from starlette.types import Message, Receive, Scope, Send

from adapters.problems import Kind, Problem
from fhir_mapping.replies import operation_outcome
from gateway.api.asgi import HttpMiddleware
from gateway.platform.store.jsontext import dumps

__all__ = ["FhirHttpConventions", "MAX_SEARCH_BODY_BYTES"]

MAX_SEARCH_BODY_BYTES = 65_536  # a form-encoded search body is a query string: no search needs more
_JSON_FORMATS = {"json", "application/json", "application/fhir+json", "application/json+fhir"}  # the last: DSTU2's, still sent
_JSON_RANGES = _JSON_FORMATS | {"*/*", "application/*"}
_SEARCH_PATH = re.compile(r"^/fhir/([A-Za-z]{1,64})/_search$")
_FORM = "application/x-www-form-urlencoded"


def _media_types(value: str) -> list[str]:
    """The media ranges of an Accept header (or a `_format` value), lower case, without parameters; q=0 ones left out."""
    out = []
    for item in value.split(","):
        kind, *params = (part.strip() for part in item.split(";"))
        if kind and not any(p.replace(" ", "").lower() in ("q=0", "q=0.0", "q=0.00", "q=0.000") for p in params):
            out.append(kind.lower())
    return out


def _unacceptable(scope: Scope) -> Problem | None:
    """Why the reply format asked for cannot be given (None: JSON will do)."""
    for value in QueryParams(scope.get("query_string", b"")).getlist("_format"):
        if not set(_media_types(value.replace(" ", "+"))) & _JSON_FORMATS:  # an unescaped '+' in a query is a space
            return Problem(
                Kind.NOT_ACCEPTABLE, "_format", f"_format={value[:40]!r}: this server answers FHIR JSON only (application/fhir+json)"
            )
    accept = Headers(scope=scope).get("accept", "").strip()
    if accept and not set(_media_types(accept)) & _JSON_RANGES:
        return Problem(Kind.NOT_ACCEPTABLE, "header:Accept", "this server answers FHIR JSON only (application/fhir+json)")
    return None


def _prefers_minimal(scope: Scope) -> bool:
    prefer = Headers(scope=scope).get("prefer", "")
    return any(p.strip().replace(" ", "").lower() == "return=minimal" for p in prefer.split(","))


async def _answer(send: Send, status: int, problem: Problem) -> None:
    body = dumps(operation_outcome([problem])).encode()
    headers = [(b"content-type", b"application/fhir+json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class FhirHttpConventions(HttpMiddleware):
    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if path.startswith("/fhir/"):
            search = _SEARCH_PATH.match(path)
            if search and scope["method"] == "POST":
                rewritten = await self._search_as_get(scope, receive, send, search.group(1))
                if rewritten is None:
                    return None
                scope, receive = rewritten
            problem = _unacceptable(scope)
            if problem is not None:
                return await _answer(send, 406, problem)
        # Location and Prefer on every route: /ingest/nhs111 creates a case as POST /fhir/QuestionnaireResponse creates
        minimal = scope["method"] == "POST" and _prefers_minimal(scope)
        url = URL(scope=scope)
        base = f"{url.scheme}://{url.netloc}".encode()
        dropping = False

        async def conventional_send(message: Message) -> None:
            nonlocal dropping
            if message["type"] == "http.response.start":
                headers = [
                    (k, base + v if k.lower() == b"location" and v.startswith(b"/fhir/") else v) for k, v in message.get("headers", [])
                ]
                if minimal and message["status"] == 201:
                    dropping = True
                    headers = [(k, v) for k, v in headers if k.lower() not in (b"content-length", b"content-type")]
                    headers.append((b"content-length", b"0"))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body" and dropping:
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b""}
            await send(message)

        await self.app(scope, receive, conventional_send)

    async def _search_as_get(self, scope: Scope, receive: Receive, send: Send, rtype: str) -> tuple[Scope, Receive] | None:
        """The GET search a form-encoded `POST {type}/_search` stands for; None when it was answered here (refused)."""
        content_type = Headers(scope=scope).get("content-type", _FORM).split(";", 1)[0].strip().lower()
        if content_type != _FORM:
            problem = Problem(Kind.NOT_SUPPORTED, "header:Content-Type", f"POST {rtype}/_search takes {_FORM} (the search parameters)")
            await _answer(send, 415, problem)
            return None
        body = b""
        settings = getattr(scope["app"].state, "settings", None) if "app" in scope else None
        seconds = settings.body_timeout_seconds if settings is not None else 30
        try:
            async with asyncio.timeout(seconds):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    body += message.get("body", b"")
                    if len(body) > MAX_SEARCH_BODY_BYTES:
                        await _answer(send, 413, Problem(Kind.TOO_LARGE, "body", f"a search body is at most {MAX_SEARCH_BODY_BYTES} bytes"))
                        return None
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            await _answer(send, 408, Problem(Kind.TIMEOUT, "body", "the search body did not arrive in time"))
            return None
        query = b"&".join(part for part in (scope.get("query_string", b""), body.strip()) if part)
        path = f"/fhir/{rtype}"
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
        get = {**scope, "method": "GET", "path": path, "raw_path": path.encode(), "query_string": query, "headers": headers}
        sent = False

        async def empty_receive() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": b"", "more_body": False}
            return await receive()  # after the body: a disconnect, as the server reports it

        return get, empty_receive
