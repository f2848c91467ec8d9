"""The letters pages: deliveries by status with the reason for each dead, failed or unacknowledged one, a delivery's
history, its letter's PDF, and Replay (a confirmed form POST, CSRF-checked, audited) through the outbox's own replay."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse, Response

from adapters.problems import GatewayInputError, Kind, Problem
from gateway.api.deps import ClockDep, SessionDep
from gateway.console.web import HEADERS, PageRoute, check_csrf, login_of, page, read_form
from gateway.letters.outbox import store
from gateway.letters.outbox.letters import letter_document
from gateway.platform.audit import note
from gateway.platform.store.db import write_transaction
from gateway.platform.store.models import OutboxRow

__all__ = ["router"]

router = APIRouter(route_class=PageRoute)
PAGE = 50
NEEDS_A_PERSON = ("dead", "failed", "unacknowledged", "withheld")  # shown with their reason


def _delivery(session: SessionDep, delivery_id: str) -> OutboxRow:
    """The delivery, as the person's session may see it (a bound key: its own service's letters only), else 404."""
    row = session.get(OutboxRow, delivery_id[:64])
    if row is None:
        raise GatewayInputError(Problem(Kind.NOT_FOUND, "id", f"no delivery {delivery_id[:64]}"))
    note({"resourceType": "DocumentReference", "id": row.letter_id, "subject": {"reference": f"Patient/{row.patient_id}"}})
    return row


@router.get("/console/letters", include_in_schema=False)
def letters(request: Request, session: SessionDep) -> Response:
    status = request.query_params.get("status") or None
    if status is not None and status not in store.STATUSES:
        raise GatewayInputError(Problem(Kind.VALUE, "status", f"unknown status {status[:20]!r}; one of {list(store.STATUSES)}"))
    try:
        offset = max(0, int(request.query_params.get("offset") or 0))
    except ValueError:
        raise GatewayInputError(Problem(Kind.VALUE, "offset", "offset must be a whole number")) from None
    rows, total = store.list_rows(session, [status] if status else None, None, PAGE, offset)
    counts, oldest = store.summary(session)
    note(*({"resourceType": "DocumentReference", "id": r.letter_id, "subject": {"reference": f"Patient/{r.patient_id}"}} for r in rows))
    return page(
        request,
        "letters.html",
        title="Letters",
        rows=rows,
        total=total,
        status=status,
        statuses=store.STATUSES,
        counts=counts,
        oldest=oldest,
        offset=offset,
        size=PAGE,
        needs_a_person=NEEDS_A_PERSON,
    )


@router.get("/console/letters/{delivery_id}", include_in_schema=False)
def delivery(delivery_id: str, request: Request, session: SessionDep) -> Response:
    row = _delivery(session, delivery_id)
    return page(request, "letter.html", title="Letter delivery", row=row, events=store.events_json(session, row.id), confirm=False)


@router.get("/console/letters/{delivery_id}/replay", include_in_schema=False)
def confirm_replay(delivery_id: str, request: Request, session: SessionDep) -> Response:
    """The confirm step: what will be sent again, and the button that does it."""
    row = _delivery(session, delivery_id)
    return page(request, "letter.html", title="Send this letter again?", row=row, events=store.events_json(session, row.id), confirm=True)


@router.post("/console/letters/{delivery_id}/replay", include_in_schema=False)
async def replay(delivery_id: str, request: Request, session: SessionDep, clock: ClockDep) -> Response:
    """Send again from the stored letter (gateway.letters.outbox.store.replay, as POST /outbox/{id}/$replay): due now, its
    earlier state kept in its history; audited by the gate as this person's operation."""
    login = login_of(request)
    check_csrf(login.csrf if login else None, await read_form(request))
    row = await run_in_threadpool(_delivery, session, delivery_id)  # may this person see it at all
    who = f"{login.principal.name if login else 'console'} (console)"

    def send_again() -> None:
        with write_transaction(request.app.state.sessions) as writing:
            try:
                store.replay(writing, row.id, who[:64], clock.now())
            except ValueError as exc:
                raise GatewayInputError(Problem(Kind.CONFLICT, "status", str(exc))) from None

    await run_in_threadpool(send_again)
    return RedirectResponse(f"/console/letters/{row.id}", status_code=303, headers=HEADERS)


@router.get("/console/letters/{delivery_id}/pdf", include_in_schema=False)
def letter_pdf(delivery_id: str, session: SessionDep) -> Response:
    """The letter's PDF as stored with it (what was, or will be, sent)."""
    row = _delivery(session, delivery_id)
    try:
        _, _, pdf = letter_document(session, row.letter_id)
    except (LookupError, StopIteration):
        raise GatewayInputError(
            Problem(Kind.NOT_FOUND, "letter", "this delivery has no stored PDF (a note to an EPR is sent as the note)")
        ) from None
    headers = {**HEADERS, "Content-Disposition": f'inline; filename="letter-{row.letter_id[:36]}.pdf"'}
    return Response(pdf, media_type="application/pdf", headers=headers)
