"""The operator console's data layer (issue 36, gateway/console_data): messages posted through the API and MLLP, then
read back with the functions the console's pages call, on a read session as a request gets one (SQLite and
PostgreSQL): counts per channel and destination, the queue by colour, the wait list, the message log and detail."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from adapters.hl7v2 import frame
from gateway.cas.safety_calls import tick
from gateway.console_data import (
    ChannelCounts,
    channel_counts,
    message_detail,
    message_log,
    outbound_counts,
    queue_colours,
    waitlist_summary,
)
from gateway.platform.clock import FixedClock
from gateway.platform.security.principal import Principal, acting
from gateway.platform.store.models import AuditEventRow
from gateway.platform.store.visibility import bind_reads
from tests.conftest import NOW, ROOT, fixture_bytes
from tests.letter_helpers import completed_case, make_deliverer
from tests.test_hl7v2 import read_acks, rio, running_mllp
from tests.test_quarantine import refused_case

HOUR = timedelta(hours=1)


@contextmanager
def read_session(app: Any, service: str | None = None) -> Iterator[Session]:
    """A read session as a request's (gateway.api.deps): bound to `service` when given."""
    with app.state.sessions() as session:
        bind_reads(session, service)
        yield session


def counts_of(app: Any, channel: str, transport: str = "http", service: str | None = None) -> ChannelCounts:
    with read_session(app, service) as session:
        found = channel_counts(session, NOW - HOUR, NOW + HOUR)
    return next(c for c in found if (c.channel, c.transport) == (channel, transport))


def pathway_referral() -> bytes:
    return (ROOT / "fixtures" / "pathways" / "tt-gp-referral-step-3.servicerequest.json").read_bytes()


def test_channel_counts_change_after_a_referral_a_refused_message_and_a_resend(app: Any, client: Any) -> None:
    with read_session(app) as session:
        quiet = channel_counts(session, NOW - HOUR, NOW + HOUR)
    assert all(c.accepted == c.refused == c.duplicates == 0 and c.busy is None for c in quiet)
    assert ("hl7v2", "mllp") in {(c.channel, c.transport) for c in quiet}  # every channel listed, quiet or not
    referral = fixture_bytes("option2-standard.case.json")
    assert client.post("/ingest/nhs111", content=referral).status_code == 201
    assert client.post("/ingest/nhs111", content=refused_case()).status_code == 400
    assert client.post("/ingest/nhs111", content=referral).status_code == 201  # a re-send
    assert client.post("/fhir/ServiceRequest/$route", content=pathway_referral()).status_code == 201
    nhs111 = counts_of(app, "nhs111-case")
    assert (nhs111.accepted, nhs111.refused, nhs111.refused_by_reason, nhs111.duplicates) == (1, 1, {"required": 1}, 1)
    assert counts_of(app, "pathway-referral").accepted == 1
    with read_session(app) as session:  # a window that ends before they came counts none of them
        assert channel_counts(session, NOW - 2 * HOUR, NOW)[0].accepted == 0


def test_hl7_over_mllp_is_counted_apart_from_hl7_over_http(app: Any, client: Any) -> None:
    assert client.post("/ingest/hl7v2", content=rio("adt-a04-register.hl7")).headers["X-HL7-Ack-Code"] == "AA"
    with running_mllp(app) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        update, unsupported = rio("adt-a31-update.hl7"), b"MSH|^~\\&|RIO|RVN|||x||ADT^A04|C9|P|2.7\r"
        sock.sendall(frame(update) + frame(update) + frame(unsupported))
        read_acks(sock, 3)
    http, mllp = counts_of(app, "hl7v2"), counts_of(app, "hl7v2", "mllp")
    assert (http.accepted, http.refused, http.duplicates) == (1, 0, 0)
    assert (mllp.accepted, mllp.refused, mllp.duplicates) == (1, 1, 1)


def test_the_message_log_lists_accepted_refused_and_resent_messages_with_what_they_created(app: Any, client: Any) -> None:
    reply = client.post("/ingest/nhs111", content=fixture_bytes("option2-standard.case.json"))
    task = reply.headers["Location"].split("/_history/")[0].split("/fhir/")[1]
    client.post("/ingest/nhs111", content=refused_case())
    client.post("/ingest/nhs111", content=fixture_bytes("option2-standard.case.json"))
    with read_session(app) as session:
        page = message_log(session)
        refused_only = message_log(session, outcome="refused")
        bars_only = message_log(session, channel="bars")
    assert [e.outcome for e in page.entries] == ["accepted", "refused", "duplicate"]  # same instant: ordered as stored
    accepted, refused, duplicate = page.entries
    assert (accepted.channel, accepted.message_id, accepted.reply_status, accepted.client_name) == (
        "nhs111-case",
        "NHS111-BNSSG-20261123-0001",
        201,
        accepted.client_name,
    )
    assert accepted.client_id is not None and accepted.client_name is not None
    assert task in accepted.resources and any(r.startswith("Patient/") for r in accepted.resources)
    for reference in accepted.resources:  # every one a resource the store holds, reachable through /fhir
        assert client.get(f"/fhir/{reference}").status_code == 200, reference
    assert (refused.reply_status, refused.reason, refused.resources, refused.message_id) == (400, "required", (), "NHS111-QUARANTINE-0001")
    assert duplicate.duplicate_of == accepted.key
    assert [e.key for e in refused_only.entries] == [refused.key] and bars_only.entries == ()
    with pytest.raises(ValueError, match="outcome"):
        message_log(session, outcome="lost")


def test_the_message_log_pages_newest_first(app: Any, client: Any, clock: FixedClock) -> None:
    case = json.loads(fixture_bytes("option2-standard.case.json"))
    for n in range(5):
        clock.set(NOW + n * timedelta(minutes=1))
        assert client.post("/ingest/nhs111", content=refused_case(f"NHS111-PAGE-{n}")).status_code == 400
        body = json.dumps(case | {"case_id": f"NHS111-PAGE-OK-{n}"}).encode()
        assert client.post("/ingest/nhs111", content=body).status_code == 201
    with read_session(app) as session:
        first, second, third = (message_log(session, page=n, page_size=4) for n in (1, 2, 3))
        later = message_log(session, since=NOW + timedelta(minutes=3))
    keys = [e.key for p in (first, second, third) for e in p.entries]
    assert len(keys) == len(set(keys)) == 10 and (first.has_next, second.has_next, third.has_next) == (True, True, False)
    times = [e.received_at for p in (first, second, third) for e in p.entries]
    assert times == sorted(times, reverse=True)
    assert {e.message_id for e in later.entries} == {"NHS111-PAGE-3", "NHS111-PAGE-4", "NHS111-PAGE-OK-3", "NHS111-PAGE-OK-4"}


def test_message_detail_shows_the_raw_body_only_when_allowed_and_audits_each_view(app: Any, client: Any) -> None:
    body = refused_case()
    client.post("/ingest/nhs111", content=body)
    with read_session(app) as session:
        (entry,) = message_log(session).entries
        events_before = session.execute(select(func.count()).select_from(AuditEventRow)).scalar_one()
        hidden = message_detail(session, entry.key, raw_allowed=False)
        assert session.execute(select(func.count()).select_from(AuditEventRow)).scalar_one() == events_before
        viewer = Principal("viewer-id", "console viewer", frozenset({"messages:raw"}))
        token = acting.set(viewer)
        try:
            shown = message_detail(session, entry.key, raw_allowed=True, sessions=app.state.sessions, now=NOW)
        finally:
            acting.reset(token)
        assert message_detail(session, "q-999999", raw_allowed=False) is None and message_detail(session, "x", raw_allowed=False) is None
    assert hidden is not None and hidden.raw is None and hidden.raw_size == len(body)
    assert hidden.problems and hidden.problems[0]["expression"] == ["call_time"]
    assert shown is not None and shown.raw == body
    audit = client.get("/fhir/AuditEvent", params={"_count": 100}).json()
    views = [e["resource"] for e in audit["entry"] if "raw body" in e["resource"].get("outcomeDesc", "")]
    assert len(views) == 1 and views[0]["agent"][0]["who"]["display"] == "console viewer"
    assert entry.key in views[0]["outcomeDesc"]


def test_a_bound_service_sees_only_its_own_messages(app: Any, client: Any, client_with: Any) -> None:
    bsw_sender = client_with({"ingest:nhs111"}, service="bsw")
    assert client.post("/ingest/nhs111", content=fixture_bytes("option2-standard.case.json")).status_code == 201  # to bnssg
    assert bsw_sender.post("/ingest/nhs111", content=refused_case("NHS111-BSW-REFUSED")).status_code == 400
    assert client.post("/ingest/nhs111", content=refused_case("NHS111-UNBOUND-REFUSED")).status_code == 400
    with read_session(app, "bnssg") as session:
        bnssg = message_log(session).entries
    with read_session(app, "bsw") as session:
        bsw = message_log(session).entries
        assert message_detail(session, bnssg[0].key, raw_allowed=False) is None  # another service's: as if unknown
    with read_session(app) as session:
        everyone = message_log(session).entries
    assert [(e.outcome, e.message_id) for e in bnssg] == [("accepted", "NHS111-BNSSG-20261123-0001")]
    assert [(e.outcome, e.message_id) for e in bsw] == [("refused", "NHS111-BSW-REFUSED")]
    assert bsw[0].client_name is None  # a bound session reads no clients (gateway.platform.store.visibility)
    assert len(everyone) == 3
    assert counts_of(app, "nhs111-case", service="bsw").refused == 1 and counts_of(app, "nhs111-case", service="bsw").accepted == 0
    assert counts_of(app, "nhs111-case", service="bnssg").accepted == 1


def test_queue_colours_follow_the_clock_and_count_safety_calls_due_CAS_09(app: Any, client: Any, clock: FixedClock) -> None:
    assert client.post("/ingest/nhs111", content=fixture_bytes("option2-standard.case.json")).status_code == 201
    with read_session(app) as session:
        now = {q.service: q for q in queue_colours(session, app.state.registry, NOW)}
    assert (now["bnssg"].open_cases, now["bnssg"].green, now["bnssg"].safety_calls_due) == (1, 1, 0)
    assert now["bsw"].open_cases == 0
    late = NOW + timedelta(hours=7)  # past the 6-hour callback (CAS-03): red, and a safety call due
    clock.set(late)
    assert tick(app.state.sessions, app.state.registry, late)
    with read_session(app, "bnssg") as session:
        (bnssg,) = queue_colours(session, app.state.registry, late)
    assert (bnssg.service, bnssg.red + bnssg.black, bnssg.green, bnssg.safety_calls_due) == ("bnssg", 1, 0, 1)


def test_waitlist_summary_counts_who_waits_against_the_targets_TT_08(app: Any, client: Any) -> None:
    assert client.post("/fhir/ServiceRequest/$route", content=pathway_referral()).status_code == 201
    with read_session(app) as session:
        services = {w.service: w for w in waitlist_summary(session, app.state.pathway_rules, NOW)}
    assert set(services) == {"north-essex-mid", "north-essex-north-east", "north-essex-west"}  # Talking Therapies only
    north_east = services["north-essex-north-east"]
    first = next(line for line in north_east.lines if line.waiting_for == "first-appointment")
    assert (north_east.waiting, first.waiting, first.target_days) == (1, 1, 28)
    assert services["north-essex-mid"].waiting == 0
    with read_session(app, "north-essex-mid") as session:
        assert [w.service for w in waitlist_summary(session, app.state.pathway_rules, NOW)] == ["north-essex-mid"]


def test_outbound_counts_show_deliveries_per_destination(app: Any, client: Any, tmp_path: Any, clock: FixedClock) -> None:
    with read_session(app) as session:
        empty = outbound_counts(session)
    assert [d.destination for d in empty] == ["mesh", "fhir", "print", "mllp", "email"] and all(d.pending == 0 for d in empty)
    completed_case(client)  # CAS-13: the consultation's notes go to the GP
    with read_session(app) as session:
        waiting = {d.destination: d for d in outbound_counts(session)}
    assert waiting["unrouted"].pending >= 1  # not yet given a route: waiting for the delivery worker
    make_deliverer(app, clock, print_dir=tmp_path).run_pass()  # no MESH mailbox or endpoint for the practice
    with read_session(app) as session:
        after = outbound_counts(session)
    moved = [(d.destination, d.dead + d.failed + d.sent + d.acknowledged + d.withheld) for d in after]
    assert sum(n for _, n in moved) >= 1 and sum(d.pending for d in after) < waiting["unrouted"].pending + 1
    with read_session(app, "bsw") as session:  # a bound session: its own service's letters only
        assert all(d.pending == d.dead == d.sent == 0 for d in outbound_counts(session))


def test_the_ops_api_reads_the_log_by_scope_and_a_raw_body_needs_messages_raw(app: Any, client: Any, client_with: Any) -> None:
    body = refused_case()
    client.post("/ingest/nhs111", content=body)
    reader, raw_reader = client_with({"messages:read"}), client_with({"messages:read", "messages:raw"})
    stranger, bound = client_with({"fhir:read"}), client_with({"messages:read"}, service="bnssg")
    (entry,) = reader.get("/ops/messages").json()["entries"]
    assert (entry["outcome"], entry["message_id"], entry["reply_status"], entry["reason"]) == (
        "refused",
        "NHS111-QUARANTINE-0001",
        400,
        "required",
    )
    channels = {(c["channel"], c["transport"]): c for c in reader.get("/ops/channels").json()["channels"]}
    assert channels[("nhs111-case", "http")]["refused"] == 1 and channels[("nhs111-case", "http")]["busy"] is None
    detail = reader.get(f"/ops/messages/{entry['key']}").json()
    assert "raw_base64" not in detail and detail["raw_size"] == len(body) and detail["problems"][0]["expression"] == ["call_time"]
    assert reader.get(f"/ops/messages/{entry['key']}", params={"raw": "true"}).status_code == 403
    shown = raw_reader.get(f"/ops/messages/{entry['key']}", params={"raw": "true"}).json()
    assert base64.b64decode(shown["raw_base64"]) == body
    assert stranger.get("/ops/messages").status_code == 403 and stranger.get("/ops/channels").status_code == 403
    assert bound.get("/ops/messages").json()["entries"] == [] and bound.get(f"/ops/messages/{entry['key']}").status_code == 404
    assert reader.get("/ops/messages", params={"outcome": "lost"}).status_code == 400
    assert reader.get("/ops/outbound").json()["destinations"][0]["destination"] == "mesh"
