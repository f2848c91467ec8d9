"""Copies of one message arriving at once, over real HTTP: exactly one Task (PostgreSQL and SQLite)."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.conftest import bearer, fixture_bytes

COPIES = 20


def _burst(send, key: str) -> list[httpx.Response]:  # type: ignore[no-untyped-def]
    barrier = threading.Barrier(COPIES)

    def one(_: int) -> httpx.Response:
        with httpx.Client(timeout=60, headers=bearer(key)) as http:
            barrier.wait()
            return send(http)

    with ThreadPoolExecutor(COPIES) as pool:
        return list(pool.map(one, range(COPIES)))


def test_concurrent_copies_of_a_flat_case_create_one_task_and_all_get_the_same_reply(server_url, stored, all_scopes_key) -> None:
    body = fixture_bytes("option2-red-flag.case.json")
    replies = _burst(lambda http: http.post(f"{server_url}/ingest/nhs111", content=body), all_scopes_key)
    assert {r.status_code for r in replies} == {201}
    assert len({r.text for r in replies}) == 1  # the original reply, every time
    counts = stored()
    assert counts["Task"] == 1 and counts["Patient"] == 1 and counts["InboundMessage"] == 1


def test_concurrent_copies_of_a_bars_message_create_one_task_and_the_rest_get_409(server_url, stored, all_scopes_key) -> None:
    body = fixture_bytes("bars-dx13-self-harm-flag.bundle.json")
    headers = {"X-Request-Id": str(uuid.uuid4()), "X-Correlation-Id": str(uuid.uuid4())}
    replies = _burst(lambda http: http.post(f"{server_url}/fhir/$process-message", content=body, headers=headers), all_scopes_key)
    statuses = sorted(r.status_code for r in replies)
    assert statuses == [200] + [409] * (COPIES - 1)
    assert all(r.json()["issue"][0]["code"] == "duplicate" for r in replies if r.status_code == 409)
    counts = stored()
    assert counts["Task"] == 1 and counts["InboundMessage"] == 1


def test_different_cases_for_one_patient_racing_all_land(server_url, stored, all_scopes_key) -> None:
    import json

    case = json.loads(fixture_bytes("option2-standard.case.json"))

    def send(http: httpx.Client) -> httpx.Response:
        copy = dict(case, case_id=f"RACE-{uuid.uuid4().hex[:12]}")
        return http.post(f"{server_url}/ingest/nhs111", content=json.dumps(copy))

    replies = _burst(send, all_scopes_key)
    assert {r.status_code for r in replies} == {201}, [r.text for r in replies if r.status_code != 201][:1]
    counts = stored()
    assert counts["Task"] == COPIES and counts["Patient"] == 1


_HOLD_WRITE_LOCK = """
import sys, time
from sqlalchemy import text
from gateway.platform.store.db import make_engine, write_transaction
from sqlalchemy.orm import sessionmaker
with write_transaction(sessionmaker(make_engine(sys.argv[1]))) as session:
    session.execute(text("INSERT INTO turns (who) VALUES ('other process')"))
    print("holding", flush=True)
    time.sleep(1.5)
"""


def test_sqlite_write_transactions_of_two_worker_processes_take_turns(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`serve --workers 2` on SQLite: a write transaction starts only once another process's has committed, so what it
    reads first (put_resources reads the rows it is about to version) is never stale, and no writer sleeps in SQLite's
    busy handler. Without the cross-process lock the read below runs beside the other transaction and sees nothing."""
    import subprocess
    import sys

    from sqlalchemy import text
    from sqlalchemy.orm import sessionmaker

    from gateway.platform.store.db import make_engine, write_transaction

    url = f"sqlite:///{tmp_path / 'turns.db'}"
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE turns (seq INTEGER PRIMARY KEY AUTOINCREMENT, who TEXT, seen INTEGER)"))
    with subprocess.Popen([sys.executable, "-c", _HOLD_WRITE_LOCK, url], stdout=subprocess.PIPE, text=True) as other:
        assert other.stdout is not None and other.stdout.readline().strip() == "holding"
        with write_transaction(sessionmaker(engine)) as session:
            seen = session.execute(text("SELECT count(*) FROM turns")).scalar_one()
            session.execute(text("INSERT INTO turns (who, seen) VALUES ('this process', :seen)"), {"seen": seen})
    assert other.returncode == 0
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT who, seen FROM turns ORDER BY seq")).all()
    engine.dispose()
    assert [tuple(r) for r in rows] == [("other process", None), ("this process", 1)]


def test_pcmis_contacts_racing_on_one_episode_are_counted_under_its_lock_TT_12(server_url, app, all_scopes_key) -> None:  # type: ignore[no-untyped-def]
    """Step 2 allows 7 contacts without the supervisor's agreement: after the assessment, 7 treatment sessions
    sent at once (each its own export) leave exactly one refused by TT-12, whatever order they land in."""
    from gateway.pathways.demo import gad7, phq9, referral
    from tests.test_pathway_api import _pcmis, episode_of

    with httpx.Client(timeout=60, headers=bearer(all_scopes_key)) as http:
        body = referral(
            "north-essex-mid", "R-RACE", "2026-10-01T10:00:00+01:00", "1990-01-01", practice="F81001", responses=(phq9(12), gad7(6))
        )
        routed = http.post(f"{server_url}/fhir/ServiceRequest/$route", json=body)
        assert routed.status_code == 201, routed.text
        episode = f"EpisodeOfCare/{episode_of(routed.json())}"
        first = http.post(f"{server_url}/ingest/pcmis", content=_pcmis(("assessment", "attended", "2026-10-06T10:00:00+01:00")))
        assert "issues" not in first.json()["rows"][0]
    sessions = [("treatment", "attended", f"2026-11-{day:02d}T10:00:00+00:00") for day in range(2, 9)]
    barrier = threading.Barrier(len(sessions))

    def one(contact: tuple[str, str, str]) -> dict:  # type: ignore[type-arg]
        with httpx.Client(timeout=60, headers=bearer(all_scopes_key)) as http:
            barrier.wait()
            reply = http.post(f"{server_url}/ingest/pcmis", content=_pcmis(contact))
            assert reply.status_code == 200, reply.text
            return dict(reply.json()["rows"][0])

    with ThreadPoolExecutor(len(sessions)) as pool:
        rows = list(pool.map(one, sessions))
    assert [r["outcome"] for r in rows] == ["accepted"] * len(sessions)
    refused = [r for r in rows if "issues" in r]
    assert len(refused) == 1 and "TT-12" in refused[0]["issues"][0]["diagnostics"]
    with app.state.sessions() as session:
        from gateway.platform.store.repo import ResourceQuery, search_resources

        on_episode, _ = search_resources(session, ResourceQuery("Encounter", tokens=[("episode-of-care", None, episode)], count=100))
    assert len(on_episode) == 1 + len(sessions)  # every contact joined the episode; 7 recorded on it, the refused one not
