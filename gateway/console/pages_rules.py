"""The rule preview page (issue 37): a candidate rule file (uploaded or pasted) checked as start-up checks it, then
replayed on the service's stored traffic (gateway.rules.whatif, read-only: nothing written, nothing sent), with the
value-by-value changes, the counts by kind of change and the changed cases; CSV by re-submitting the same candidate.

A what-if run reads patient data: the gate audits each POST as this person's search, naming the cases it showed. A
key bound to a service may preview only its own service's rule files (the replay reads that service's traffic only).
"""

from __future__ import annotations

from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from adapters.problems import GatewayInputError, Kind, Problem
from gateway.api.ingest import read_body
from gateway.cas.rules.schema import RuleFileError, load_rules
from gateway.console.web import HEADERS, PageRoute, check_csrf, login_of, page
from gateway.pathways.rules.schema import load_pathways
from gateway.platform.audit import note
from gateway.rules.candidate import Candidate, check_candidate
from gateway.rules.whatif import WhatIfReport, parse_since, what_if
from gateway.rules.whatif_format import FIELDS, as_csv

__all__ = ["router"]

router = APIRouter(route_class=PageRoute)
_LIMIT = 262_144  # a rule file is a few kB; the form carries it once
DEFAULT_SINCE = "30d"


class _Refused(Exception):
    """The candidate (or the window) is refused: said on the page itself, beside the form."""


def _multipart(raw: bytes, content_type: str) -> dict[str, str]:
    """A multipart/form-data body's fields (each's first value; a file field: its content, its name under `<field>.name`)."""
    message = BytesParser(policy=policy.HTTP).parsebytes(b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + raw)
    if not message.is_multipart():
        raise GatewayInputError(Problem(Kind.STRUCTURE, "form", "not a form"))
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or name in fields:
            continue
        payload = part.get_payload(decode=True)
        fields[name] = payload.decode("utf-8") if isinstance(payload, bytes) else ""
        filename = part.get_filename()
        if filename:
            fields[f"{name}.name"] = filename
    return fields


async def _form(request: Request) -> dict[str, str]:
    """The form's fields, urlencoded or multipart; GatewayInputError for a body too large, not a form, or not UTF-8."""
    raw = await read_body(request, _LIMIT)
    content_type = request.headers.get("content-type", "")
    try:
        if content_type.startswith("multipart/form-data"):
            return _multipart(raw, content_type)
        fields = parse_qs(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise GatewayInputError(Problem(Kind.STRUCTURE, "form", "not a form (or a file that is not UTF-8 text)")) from None
    return {name: values[0] for name, values in fields.items()}


def _candidate_text(form: dict[str, str]) -> tuple[str, Path]:
    """The uploaded file if one was chosen, else the pasted text; and the name it is checked under."""
    upload = form.get("upload", "")
    if upload.strip():
        return upload, Path(Path(form.get("upload.name") or "candidate.yaml").name or "candidate.yaml")
    text = form.get("text", "")
    if not text.strip():
        raise _Refused("choose a candidate rule file or paste one")
    return text, Path("candidate.yaml")


def _preview(request: Request, form: dict[str, str]) -> tuple[Candidate, WhatIfReport]:
    """Check the candidate as start-up would, then replay it read-only; _Refused with the reason when it cannot be."""
    state = request.app.state
    settings = state.settings
    text, source = _candidate_text(form)
    try:
        window = parse_since(form.get("since") or DEFAULT_SINCE)
    except ValueError as error:
        raise _Refused(str(error).replace("--since", "since")) from None
    try:
        candidate = check_candidate(text, source, settings)
    except RuleFileError as error:
        raise _Refused(f"refused: {error}") from None  # start-up's own text
    login = login_of(request)
    bound = login.principal.service_id if login else None
    if bound is not None and bound != candidate.service_id:
        raise GatewayInputError(
            Problem(Kind.FORBIDDEN, "service", f"your key is bound to {bound}: it may not preview {candidate.service_id}'s rules")
        )
    if candidate.kind not in ("cas-queue", "pathway"):
        raise _Refused(f"what-if replays CAS queue and pathway rule files; this is a {candidate.kind} profile")
    live: Any = load_rules(settings.rules_dir) if candidate.kind == "cas-queue" else load_pathways(settings.pathways_dir)
    report = what_if(state.engine, candidate, live, state.clock, window)  # read-only transaction, rolled back
    note(*({"resourceType": case.reference.split("/")[0], "id": case.reference.split("/")[-1]} for case in report.cases))
    return candidate, report


def _render(request: Request, status: int, **values: Any) -> Response:
    return page(request, "rules.html", status, title="Preview a rule change", fields=FIELDS, **values)


@router.get("/console/rules", include_in_schema=False)
def rules_form(request: Request) -> Response:
    return _render(request, 200, error=None, report=None, candidate=None, since=DEFAULT_SINCE)


@router.post("/console/rules", include_in_schema=False)
async def rules_preview(request: Request) -> Response:
    login = login_of(request)
    form = await _form(request)
    check_csrf(login.csrf if login else None, form)
    since = (form.get("since") or DEFAULT_SINCE)[:20]
    try:
        candidate, report = await run_in_threadpool(_preview, request, form)
    except _Refused as refused:
        return _render(request, 422, error=str(refused), report=None, candidate=None, since=since)
    return _render(request, 200, error=None, report=report, candidate=candidate, since=since)


@router.post("/console/rules/csv", include_in_schema=False)
async def rules_csv(request: Request) -> Response:
    """The same preview as CSV (the page's download form re-submits the candidate it checked)."""
    login = login_of(request)
    form = await _form(request)
    check_csrf(login.csrf if login else None, form)
    try:
        candidate, report = await run_in_threadpool(_preview, request, form)
    except _Refused as refused:
        raise GatewayInputError(Problem(Kind.VALUE, "candidate", str(refused))) from None
    name = f"what-if-{candidate.service_id}-{candidate.version}.csv".replace('"', "")
    headers = {**HEADERS, "Content-Disposition": f'attachment; filename="{name}"'}
    return Response(as_csv(report), media_type="text/csv; charset=utf-8", headers=headers)
