"""The quarantine log (issue 36, docs/quarantine.md): refused messages kept with their problems, never reachable
through /fhir, re-sends counted, busy turn-aways not kept, purged after their retention by the injected clock; a
refusal answered exactly as it would be without the log, even when keeping it fails."""

from __future__ import annotations

import json
import socket
import threading
import time
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text

from adapters.hl7v2 import frame
from gateway.api.app import create_app
from gateway.platform.clock import FixedClock
from gateway.platform.store.models import QuarantinedMessage, ResentMessage
from tests.conftest import (
    ALL_SCOPES,
    NOW,
    add_test_client,
    bars_headers,
    bearer,
    fixture_bytes,
    fixture_json,
    gateway_settings,
    metric_value,
    serving,
    sqlite_writer_held,
)
from tests.test_cli import _run
from tests.test_hl7v2 import read_acks, rio, running_mllp


def quarantined(app: Any) -> list[QuarantinedMessage]:
    with app.state.sessions() as session:
        return list(session.execute(select(QuarantinedMessage).order_by(QuarantinedMessage.seq)).scalars())


def resent(app: Any) -> list[ResentMessage]:
    with app.state.sessions() as session:
        return list(session.execute(select(ResentMessage).order_by(ResentMessage.seq)).scalars())


def refused_case(case_id: str = "NHS111-QUARANTINE-0001") -> bytes:
    case = fixture_json("option2-standard.case.json") | {"case_id": case_id}
    del case["call_time"]
    return json.dumps(case).encode()


def test_a_refused_referral_is_kept_with_its_problems_its_reply_status_and_its_body(app: Any, client: Any, stored: Any) -> None:
    before = stored()
    body = refused_case()
    reply = client.post("/ingest/nhs111", content=body)
    assert reply.status_code == 400, reply.text
    assert stored() == before  # nothing of it among the clinical data
    (row,) = quarantined(app)
    assert (row.channel, row.transport, row.message_id, row.reply_status, row.ack_code) == (
        "nhs111-case",
        "http",
        "NHS111-QUARANTINE-0001",
        400,
        None,
    )
    assert json.loads(row.problems) == reply.json()["issue"] and row.reason == reply.json()["issue"][0]["code"]
    assert row.raw == body and row.received_at == NOW and row.client_id is not None


def test_a_refused_message_is_never_reachable_through_fhir(app: Any, client: Any) -> None:
    assert client.post("/ingest/nhs111", content=refused_case()).status_code == 400
    assert len(quarantined(app)) == 1
    found = client.get("/fhir/Patient", params={"identifier": "https://fhir.nhs.uk/Id/nhs-number|9990000018"}).json()
    assert found["total"] == 0  # its NHS number is in its raw body, and indexed nowhere
    for path in ("/fhir/Task", "/fhir/ServiceRequest", "/fhir/Encounter"):  # (a Patient search must name who)
        assert client.get(path).json()["total"] == 0, path
    assert client.get("/fhir/QuarantinedMessage").status_code in (400, 404)
    assert client.get("/fhir/QuarantinedMessage/1").status_code in (400, 404)


def test_when_keeping_a_refusal_fails_the_sender_gets_the_same_reply_and_the_failure_is_counted(app: Any, client: Any) -> None:
    """The store refuses the quarantine write (a trigger, as a failing database would): the refusal is answered exactly
    as a kept one is, never 500, and `iap_quarantine_failures_total` counts it."""
    kept = client.post("/ingest/nhs111", content=refused_case("NHS111-QUARANTINE-0002"))
    before = client.get("/metrics").text
    kind = app.state.engine.dialect.name
    failing = {
        "sqlite": ["CREATE TRIGGER no_quarantine BEFORE INSERT ON quarantine BEGIN SELECT RAISE(ABORT, 'refused'); END"],
        "postgresql": [
            "CREATE FUNCTION no_quarantine() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$",
            "CREATE TRIGGER no_quarantine BEFORE INSERT ON quarantine FOR EACH ROW EXECUTE FUNCTION no_quarantine()",
        ],
    }[kind]
    with app.state.engine.begin() as connection:
        for statement in failing:
            connection.execute(text(statement))
    try:
        lost = client.post("/ingest/nhs111", content=refused_case("NHS111-QUARANTINE-0002"))
    finally:
        with app.state.engine.begin() as connection:
            connection.execute(text("DROP TRIGGER no_quarantine" + (" ON quarantine" if kind == "postgresql" else "")))
            if kind == "postgresql":
                connection.execute(text("DROP FUNCTION no_quarantine()"))
    assert (lost.status_code, lost.content, lost.headers["content-type"]) == (kept.status_code, kept.content, kept.headers["content-type"])
    after = client.get("/metrics").text
    counted = metric_value(after, "iap_quarantine_failures_total", channel="nhs111-case")
    assert counted - metric_value(before, "iap_quarantine_failures_total", channel="nhs111-case") == 1
    assert len(quarantined(app)) == 1  # the first one only


def test_a_bars_message_refused_is_kept_under_its_request_id_and_a_bars_resend_counts_as_a_duplicate(app: Any, client: Any) -> None:
    bundle = fixture_bytes("bars-dx13-self-harm-flag.bundle.json")
    headers = bars_headers()
    assert client.post("/fhir/$process-message", content=bundle, headers=headers).status_code == 200
    again = client.post("/fhir/$process-message", content=bundle, headers=headers)
    assert again.status_code == 409
    refused_headers = bars_headers()
    assert client.post("/fhir/$process-message", content=b'{"resourceType": "Bundle"}', headers=refused_headers).status_code >= 400
    ((row,), (resend,)) = quarantined(app), resent(app)
    assert (row.channel, row.message_id) == ("bars", refused_headers["X-Request-Id"])
    assert (resend.channel, resend.message_id, resend.reply_status) == ("bars", headers["X-Request-Id"], 409)


def test_a_resent_referral_counts_as_a_duplicate_of_the_stored_one(app: Any, client: Any) -> None:
    body = fixture_bytes("option2-standard.case.json")
    first = client.post("/ingest/nhs111", content=body)
    again = client.post("/ingest/nhs111", content=body)
    assert first.status_code == again.status_code == 201 and again.headers["X-Duplicate-Of"]
    (row,) = resent(app)
    assert (row.channel, row.message_id, row.original_seq, row.reply_status) == (
        "nhs111-case",
        "NHS111-BNSSG-20261123-0001",
        int(again.headers["X-Duplicate-Of"]),
        201,
    )
    assert quarantined(app) == []


def test_hl7_refusals_are_kept_with_their_ack_and_err_over_http_and_mllp_and_resends_counted(app: Any, client: Any) -> None:
    bad = rio("adt-a04-register.hl7").replace(b"9990000131", b"9990000132", 1)  # a bad NHS number: AE, PID-3
    reply = client.post("/ingest/hl7v2", content=bad)
    assert reply.headers["X-HL7-Ack-Code"] == "AE"
    good = rio("adt-a31-update.hl7")
    with running_mllp(app) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(frame(b"MSH|^~\\&|RIO|RVN|IAPGW|IAP|20261123+0000||ADT^A04|C1|P|2.7\r") + frame(good) + frame(good))
        acks = read_acks(sock, 3)
    assert [a.split(b"\rMSA|")[1][:2] for a in acks] == [b"AR", b"AA", b"AA"]
    http_row, mllp_row = quarantined(app)
    assert (http_row.transport, http_row.ack_code, http_row.reply_status, http_row.raw) == ("http", "AE", 200, bad)
    assert http_row.reason == "AE 102" and json.loads(http_row.problems)[0]["expression"] == ["PID-3"]
    assert http_row.message_id == "RVN|RIO-ADT-0002"  # MSH-4|MSH-10, as the HL7 intake keys a message
    assert (mllp_row.transport, mllp_row.ack_code, mllp_row.reply_status, mllp_row.message_id) == ("mllp", "AR", None, "RVN|C1")
    assert mllp_row.client_id == "mllp:127.0.0.1" and mllp_row.reason == "AR 203"
    (again,) = resent(app)
    assert (again.channel, again.transport, again.ack_code) == ("hl7v2", "mllp", "AA") and again.original_seq is not None


def test_a_batch_keeps_each_refused_row_with_its_own_bytes_and_counts_each_resent_row(app: Any, client: Any) -> None:
    export = fixture_bytes("../pcmis/contacts.csv")
    header, first, *_ = export.split(b"\n")
    broken = first.replace(b"9990000158", b"9990000159", 1).replace(b"PCMIS-C-0001", b"PCMIS-C-BAD1", 1)
    reply = client.post("/ingest/pcmis", content=header + b"\n" + first + b"\n" + broken + b"\n").json()
    assert [r["outcome"] for r in reply["rows"]] == ["accepted", "refused"]
    assert [r["outcome"] for r in client.post("/ingest/pcmis", content=header + b"\n" + first + b"\n").json()["rows"]] == ["duplicate"]
    (row,) = quarantined(app)
    assert (row.channel, row.message_id, row.reply_status) == ("pcmis", "PCMIS-C-BAD1", 200)
    assert row.raw is not None and b"PCMIS-C-BAD1" in row.raw and b"PCMIS-C-0001" not in row.raw  # the row alone, with the header
    assert json.loads(row.problems) == reply["rows"][1]["issues"]
    (again,) = resent(app)
    assert (again.channel, again.message_id) == ("pcmis", "PCMIS-C-0001")


def test_refused_messages_are_purged_after_their_retention_by_the_injected_clock(app: Any, client: Any, clock: FixedClock) -> None:
    assert app.state.settings.quarantine_retention_days == 14  # the default
    assert client.post("/ingest/nhs111", content=refused_case()).status_code == 400
    body = fixture_bytes("option2-standard.case.json")
    client.post("/ingest/nhs111", content=body)
    client.post("/ingest/nhs111", content=body)
    clock.set(NOW + timedelta(days=1))
    assert client.post("/ingest/nhs111", content=refused_case("NHS111-QUARANTINE-LATER")).status_code == 400
    assert app.state.purge_quarantine(NOW + timedelta(days=14)) == 0  # exactly 14 days old: still kept
    assert len(quarantined(app)) == 2 and len(resent(app)) == 1
    assert app.state.purge_quarantine(NOW + timedelta(days=14, seconds=1)) == 2
    assert [r.message_id for r in quarantined(app)] == ["NHS111-QUARANTINE-LATER"] and resent(app) == []


def test_a_message_turned_away_busy_is_not_kept_in_the_quarantine_log(tmp_path: Any) -> None:
    """Busy (503, IAP_INGEST_QUEUE_SECONDS): the sender sends it again; it counts as busy (iap_messages_total
    outcome="unavailable"), not as refused. SQLite: another process holds the file's writer lock, so the one message
    at a time (a referral) waits for it, and the next (one that would be refused) waits past its turn, unread."""
    url = f"sqlite:///{tmp_path / 'busy.db'}"
    settings = gateway_settings(url, ingest_concurrency=1, ingest_queue_seconds=0.3, db_statement_timeout_ms=20_000)
    application = create_app(settings, FixedClock(NOW))
    key = add_test_client(application, ALL_SCOPES)
    try:
        with serving(application) as base, httpx.Client(base_url=base, headers=bearer(key), timeout=30) as http:
            first: list[httpx.Response] = []
            referral = fixture_bytes("option2-standard.case.json")
            with sqlite_writer_held(tmp_path / "busy.db"):
                sender = threading.Thread(target=lambda: first.append(http.post("/ingest/nhs111", content=referral)))
                sender.start()
                time.sleep(1.0)  # the referral has its turn and waits for the writer
                busy = http.post("/ingest/nhs111", content=refused_case("BUSY-2"))
            sender.join(timeout=30)
            assert busy.status_code == 503 and [r.status_code for r in first] == [201]
            assert quarantined(application) == []
            assert http.post("/ingest/nhs111", content=refused_case("BUSY-2")).status_code == 400  # sent again: read, refused
        assert [r.message_id for r in quarantined(application)] == ["BUSY-2"]
    finally:
        application.state.engine.dispose()


@pytest.mark.parametrize("path", ["/ingest/nhs111", "/ingest/hl7v2"])
def test_unauthenticated_senders_leave_nothing_in_the_quarantine_log(app: Any, anonymous: Any, path: str) -> None:
    assert anonymous.post(path, content=refused_case()).status_code == 401
    assert quarantined(app) == []


def test_iap_gateway_tick_purges_the_quarantine_log_past_its_retention(app: Any, client: Any, database_url: str) -> None:
    """Where the ticker is off (IAP_TICK_SECONDS=0), `iap-gateway tick` purges, at the time it is given."""
    assert client.post("/ingest/nhs111", content=refused_case()).status_code == 400
    env = {"DATABASE_URL": database_url, "IAP_QUARANTINE_RETENTION_DAYS": "3"}
    kept = _run("tick", "--now", (NOW + timedelta(days=3)).isoformat(), env=env)
    assert kept.returncode == 0 and "0 quarantine log row(s)" in kept.stderr, kept.stderr
    gone = _run("tick", "--now", (NOW + timedelta(days=3, minutes=1)).isoformat(), env=env)
    assert gone.returncode == 0 and "1 quarantine log row(s)" in gone.stderr and quarantined(app) == []
