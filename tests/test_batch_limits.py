"""Bounded work per CSV batch (PCMIS, SystmOne) over HTTP: a row limit, empty rows refused cheaply, a compact reply,
and no row started once the sender has hung up (issue 31, item 3)."""

from __future__ import annotations

import socket
import threading
from typing import Any

import httpx
import pytest

from gateway.platform.messages import previous
from tests.conftest import bearer, serving
from tests.test_pcmis import CONTACTS, post, rows, to_csv

SYSTMONE = CONTACTS.parent.parent / "systmone" / "contacts.csv"


def _limit(app: Any, max_rows: int) -> None:
    app.state.settings = app.state.settings.model_copy(update={"batch_max_rows": max_rows})


@pytest.mark.parametrize(("route", "export"), [("pcmis", CONTACTS), ("systmone", SYSTMONE)])
def test_a_batch_over_the_row_limit_is_refused_whole_413_and_nothing_is_stored(app, client, stored, route: str, export) -> None:  # type: ignore[no-untyped-def]
    """IAP_BATCH_MAX_ROWS: the file is refused before any row is stored, naming the limit; within it, it is taken."""
    records = rows(export.read_text())
    _limit(app, len(records) - 1)
    before = stored()
    reply = client.post(f"/ingest/{route}", content=export.read_bytes(), headers={"Content-Type": "text/csv"})
    assert reply.status_code == 413, reply.text
    (issue,) = reply.json()["issue"]
    assert issue["expression"] == ["file"] and f"more than {len(records) - 1} rows (IAP_BATCH_MAX_ROWS)" in issue["diagnostics"]
    assert stored() == before
    _limit(app, len(records))
    taken = client.post(f"/ingest/{route}", content=export.read_bytes(), headers={"Content-Type": "text/csv"})
    assert taken.status_code == 200 and len(taken.json()["rows"]) == len(records)


def test_an_export_of_thousands_of_empty_rows_is_refused_whole_by_the_default_limit(client, stored) -> None:  # type: ignore[no-untyped-def]
    header = CONTACTS.read_text().splitlines()[0]
    empties = (header + "\n" + ("," * header.count(",") + "\n") * 2_000).encode()
    before = stored()
    reply = post(client, empties)
    assert reply.status_code == 413 and "more than 1000 rows" in reply.json()["issue"][0]["diagnostics"]
    assert stored() == before


def test_empty_rows_are_refused_with_one_issue_each_and_every_row_reply_is_compact(client) -> None:  # type: ignore[no-untyped-def]
    """An empty row is one short refusal (not a dozen 'required' issues); no row's issues repeat the BaRS error code."""
    records = rows(CONTACTS.read_text())
    empty = {column: "" for column in records[0]}
    bad = records[0] | {"contact_id": "PCMIS-BAD-1", "phq9_1": "9"}
    reply = post(client, to_csv([records[0], empty, bad, empty]))
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert (body["accepted"], body["refused"]) == (1, 3)
    for number in (2, 4):
        assert body["rows"][number - 1] == {
            "row": number,
            "contact_id": None,
            "outcome": "refused",
            "issues": [{"severity": "error", "code": "required", "diagnostics": "the row is empty", "expression": [f"row[{number}]"]}],
        }
    assert body["rows"][2]["issues"] == [
        {"severity": "error", "code": "value", "diagnostics": "phq9_1 must be a whole number from 0 to 3", "expression": ["row[3].phq9_1"]}
    ]
    assert set(body["rows"][0]) == {"row", "contact_id", "outcome", "resources"}


def test_a_batch_whose_sender_hangs_up_starts_no_further_row_and_the_rows_taken_stay(app, all_scopes_key: str) -> None:  # type: ignore[no-untyped-def]
    """The first row is being stored when the sender goes: it is committed; the other two are never started. Sent
    again, the first is a duplicate and the others are taken."""
    batches = app.state.pcmis
    first_row_started, seen = threading.Event(), dict[str, Any]()
    receive_batch, build = batches.receive_batch, batches.build

    def spy_receive(raw: bytes, max_rows: int | None, gone: Any) -> Any:
        seen["gone"] = gone
        return receive_batch(raw, max_rows, gone)

    def slow_build(*args: Any) -> Any:  # the first row holds on until the gateway has noticed the sender has gone
        if not first_row_started.is_set():
            first_row_started.set()
            seen["noticed"] = _wait_for(seen["gone"], 20)
        return build(*args)

    batches.receive_batch, batches.build = spy_receive, slow_build
    body = CONTACTS.read_bytes()
    ids = [r["contact_id"] for r in rows(body.decode())]
    with serving(app) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            head = (
                f"POST /ingest/pcmis HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {all_scopes_key}\r\n"
                f"Content-Type: text/csv\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            sock.sendall(head.encode() + body)
            assert first_row_started.wait(30)
        # the connection is closed: the first row finishes, then the batch stops
        assert _wait_for(lambda: previous(app.state.sessions, "pcmis", ids[0]) is not None, 30)
        assert seen["noticed"] is True
        assert [previous(app.state.sessions, "pcmis", i) is None for i in ids] == [False, True, True]
        again = httpx.post(f"{url}/ingest/pcmis", content=body, headers={"Content-Type": "text/csv", **bearer(all_scopes_key)}, timeout=60)
    assert [r["outcome"] for r in again.json()["rows"]] == ["duplicate", "accepted", "accepted"]


def _wait_for(condition: Any, seconds: float) -> bool:
    """Poll `condition` until it holds or `seconds` pass (a bound on waiting, not a timed assertion)."""
    import time

    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
