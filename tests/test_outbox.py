"""The durable outbox (issue 7): retries with backoff, dead letters, replay, retention, claiming, routing, consent.

The FHIR push receiver is remote, so it is the one thing mocked (respx); everything else is real.
"""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from typing import Any

import httpx
import pytest
import respx

from common.datetimes import parse_source_datetime
from fhir_mapping.pcmis import CLIENT_COPY_ACTION, consent_id
from gateway.letters.outbox import store
from gateway.letters.outbox.worker import RetryPolicy
from gateway.platform.store.repo import ResourceQuery, get_resource, put_resource, search_resources
from tests.conftest import NOW
from tests.letter_helpers import completed_case, letter_request, make_deliverer, outbox, pcmis_contacts, write_routing

RECEIVER = "https://gp-system.example.test/fhir"
PRACTICES = ("L81001", "L81002", "L81003", "L81006", "L81007", "J83001")  # the fixtures' GP practices
OUTCOME = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "processing", "diagnostics": "patient not registered here"}],
}


@pytest.fixture
def push(app, clock, tmp_path):  # type: ignore[no-untyped-def]
    """A worker whose routing sends practice L81001's letters to a FHIR server (mocked with respx)."""
    deliverer = make_deliverer(
        app,
        clock,
        routing_file=write_routing(tmp_path, fhir_endpoints=dict.fromkeys(PRACTICES, RECEIVER)),
        outbox_max_attempts=5,
        outbox_backoff_seconds=30.0,
        outbox_backoff_max_seconds=600.0,
    )
    yield deliverer
    deliverer.close()


def delivery(client, delivery_id: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return client.get(f"/outbox/{delivery_id}").json()  # type: ignore[no-any-return]


def test_backoff_is_exponential_with_jitter_and_bounded() -> None:
    policy = RetryPolicy(max_attempts=6, initial_seconds=30, max_seconds=600)
    for attempt, floor in ((1, 30), (2, 60), (3, 120), (4, 240)):
        delays = {policy.next_delay(attempt) for _ in range(20)}
        assert all(timedelta(seconds=floor) <= d <= timedelta(seconds=floor + 16) for d in delays if d), (attempt, delays)  # type: ignore[operator]
        assert len(delays) > 1  # jitter
    assert all((policy.next_delay(5) or timedelta(0)) <= timedelta(seconds=600) for _ in range(20))  # capped
    assert policy.next_delay(6) is None  # bounded: the sixth failure is the last


@respx.mock
def test_receiver_down_for_the_first_attempts_gets_the_letter_once_when_it_returns(client, push, clock) -> None:
    """Reliability: 503, timeout, 502, then up: delivered once; every attempt recorded; waits grow (tenacity backoff)."""
    route = respx.post(f"{RECEIVER}/Bundle").mock(
        side_effect=[
            httpx.Response(503),
            httpx.ConnectTimeout("down"),
            httpx.Response(502),
            httpx.Response(201, headers={"Location": f"{RECEIVER}/Bundle/received-1"}),
        ]
    )
    completed_case(client)
    (row,) = outbox(client)
    waits = []
    for _ in range(3):
        assert push.deliver_once() == [(row["id"], "pending")]
        due = delivery(client, row["id"])["next_attempt_at"]
        waits.append(due)
        assert push.deliver_once() == []  # not due yet
        clock.set(parse_source_datetime(due))
    assert push.deliver_once() == [(row["id"], "delivered")]
    assert (
        route.call_count == 4
        and sum(1 for c in route.calls if c.optional_response is not None and c.optional_response.status_code == 201) == 1
    )
    sent = json.loads(route.calls[-1].request.content)
    assert sent["type"] == "document" and sent["id"] == row["letter"].split("/")[1]
    assert route.calls[-1].request.headers["If-None-Exist"].endswith(sent["id"])  # a re-send is recognised by the receiver
    done = delivery(client, row["id"])
    assert done["status"] == "delivered" and done["attempts"] == 4 and done["transport"] == "fhir"
    kinds = [(e["kind"], e["outcome"]) for e in done["events"]]
    assert kinds.count(("attempt", "started")) == 4 and kinds.count(("attempt", "retry")) == 3 and ("attempt", "delivered") in kinds
    due = [parse_source_datetime(w) for w in waits]
    gaps = [due[0] - NOW, due[1] - due[0], due[2] - due[1]]
    assert gaps[0] < gaps[1] < gaps[2]  # exponential
    request = client.get("/fhir/CommunicationRequest").json()["entry"][0]["resource"]
    assert request["status"] == "completed"


@respx.mock
def test_a_refusal_is_dead_lettered_at_once_with_the_receivers_operation_outcome(client, push) -> None:
    route = respx.post(f"{RECEIVER}/Bundle").mock(return_value=httpx.Response(422, json=OUTCOME))
    completed_case(client)
    (row,) = outbox(client)
    assert push.deliver_once() == [(row["id"], "dead")]
    assert route.call_count == 1  # a 4xx is not retried
    (dead,) = outbox(client, status="dead")
    assert dead["id"] == row["id"] and "HTTP 422" in dead["reason"] and dead["outcome"] == OUTCOME


@respx.mock
def test_exhausted_attempts_end_as_a_dead_letter_and_replay_sends_the_stored_letter(app, client, clock, tmp_path) -> None:
    worker = make_deliverer(
        app,
        clock,
        routing_file=write_routing(tmp_path, fhir_endpoints={"L81001": RECEIVER}),
        outbox_max_attempts=3,
        outbox_backoff_seconds=1.0,
    )
    route = respx.post(f"{RECEIVER}/Bundle").mock(return_value=httpx.Response(503))
    completed_case(client)
    (row,) = outbox(client)
    for _ in range(3):
        clock.set(clock.now() + timedelta(hours=1))
        worker.deliver_once()
    (dead,) = outbox(client, status="dead")
    assert dead["attempts"] == 3 and dead["reason"].startswith("gave up after 3 attempts") and "HTTP 503" in dead["reason"]
    stored = client.get(f"/fhir/{row['document']}").json()
    route.mock(return_value=httpx.Response(201))
    replayed = client.post(f"/outbox/{row['id']}/$replay", headers={"X-User": "Ops Synthetic"})
    assert replayed.status_code == 200 and replayed.json()["status"] == "pending"
    assert worker.deliver_once() == [(row["id"], "delivered")]
    assert json.loads(route.calls[-1].request.content) == {k: v for k, v in stored.items() if k != "meta"}
    events = delivery(client, row["id"])["events"]
    (replay,) = [e for e in events if e["kind"] == "replay"]
    assert replay["detail"].startswith("by test-") and "(Ops Synthetic)" in replay["detail"] and "was dead" in replay["detail"]
    again = client.post(f"/outbox/{row['id']}/$replay")
    assert again.status_code == 200  # a delivered letter may be sent again on purpose
    worker.close()


@respx.mock
def test_retention_deletes_delivered_rows_but_never_failed_dead_or_withheld(app, client, push, clock) -> None:
    respx.post(f"{RECEIVER}/Bundle").mock(side_effect=[httpx.Response(201), httpx.Response(400, json=OUTCOME)])
    completed_case(client)
    completed_case(client, "option2-red-flag.case.json")
    patient_id = pcmis_contacts(client)  # self-referred, GP not to be contacted: the letter is withheld (TT-14)
    client.post("/fhir/CommunicationRequest", content=json.dumps(letter_request("tt-d-1", "tt-discharge", patient_id, [])))
    assert sorted(s for _, s in push.deliver_once()) == ["dead", "delivered", "withheld"]
    with app.state.sessions.begin() as session:
        (failed,) = store.list_rows(session, ["delivered"])[0]
        failed.status = "failed"  # as a negative ITK acknowledgement leaves it
    respx.post(f"{RECEIVER}/Bundle").mock(return_value=httpx.Response(201))
    completed_case(client, "option1-dx12.case.json")
    push.deliver_once()
    before = sorted(r["status"] for r in outbox(client))
    assert before == ["dead", "delivered", "failed", "withheld"]
    clock.set(clock.now() + timedelta(days=120))
    assert push.run_pass()["purged"] == 1
    assert sorted(r["status"] for r in outbox(client)) == ["dead", "failed", "withheld"]


def test_workers_racing_for_deliveries_never_claim_the_same_one(app, client, clock) -> None:
    """Several instances: PostgreSQL FOR UPDATE SKIP LOCKED plus a conditional update; each delivery has one owner."""
    for fixture in ("option2-standard.case.json", "option2-red-flag.case.json", "option1-dx12.case.json", "third-party-bsw.case.json"):
        completed_case(client, fixture)
    assert len(outbox(client)) == 4
    start = threading.Barrier(3)
    taken: list[list[str]] = [[], [], []]

    def worker(index: int) -> None:
        start.wait()
        taken[index] = [c.id for c in store.claim(app.state.sessions, f"w{index}", clock.now(), timedelta(minutes=5), limit=4)]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    claimed = [d for ids in taken for d in ids]
    assert sorted(claimed) == sorted(r["id"] for r in outbox(client)) and len(set(claimed)) == len(claimed)
    assert store.claim(app.state.sessions, "late", clock.now(), timedelta(minutes=5)) == []  # leased
    retaken = store.claim(app.state.sessions, "after-lease", clock.now() + timedelta(minutes=6), timedelta(minutes=5))
    assert len(retaken) == 4 and all(c.in_doubt for c in retaken)  # their workers vanished mid-send: in doubt


def test_no_route_is_a_dead_letter_with_its_reason(app, client, clock, tmp_path) -> None:
    worker = make_deliverer(app, clock, routing_file=write_routing(tmp_path, gpprovider=False))
    completed_case(client)
    (row,) = outbox(client)
    assert worker.deliver_once() == [(row["id"], "dead")]
    assert "no MESH mailbox or FHIR endpoint for ODS L81001" in outbox(client, status="dead")[0]["reason"]
    worker.close()


def test_gp_letter_withheld_when_the_client_asked_the_gp_not_be_contacted_but_their_copy_is_printed_TT_14(
    app, client, clock, tmp_path
) -> None:
    """TT-14/TT-02: checked when sending; the decision is recorded (outbox status, reason, Provenance on the letter)."""
    prints = tmp_path / "print"
    worker = make_deliverer(app, clock, routing_file=write_routing(tmp_path, fhir_endpoints={"L81001": RECEIVER}), print_dir=prints)
    patient_id = pcmis_contacts(client)
    request = letter_request(
        "tt-discharge-1",
        "tt-discharge",
        patient_id,
        [],
        recipients=[
            {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "L81001"}},
            {"reference": f"Patient/{patient_id}"},
        ],
    )
    letter = client.post("/fhir/CommunicationRequest", content=json.dumps(request)).json()
    with respx.mock(assert_all_called=False) as mock:
        route = mock.post(f"{RECEIVER}/Bundle").mock(return_value=httpx.Response(201))
        results = dict(worker.deliver_once())
        assert route.call_count == 0  # nothing reached the GP
    rows = {r["recipient_kind"]: r for r in outbox(client)}
    assert results[rows["gp"]["id"]] == "withheld" and rows["gp"]["reason"].startswith(
        "TT-14: the client asked that the GP not be contacted"
    )
    assert results[rows["patient"]["id"]] == "delivered"
    (printed,) = prints.glob("*.pdf")
    assert printed.read_bytes().startswith(b"%PDF")
    with app.state.sessions() as session:
        records, _ = search_resources(session, ResourceQuery("Provenance", tokens=[("target", None, f"DocumentReference/{letter['id']}")]))
    assert any(r["activity"]["coding"][0]["code"] == "letter-withheld-gp" and "TT-14" in r["reason"][0]["text"] for r in records)
    worker.close()


def test_client_copy_withheld_when_the_client_prefers_not_TT_15(app, client, clock, tmp_path) -> None:
    prints = tmp_path / "print"
    worker = make_deliverer(app, clock, routing_file=write_routing(tmp_path), print_dir=prints)
    patient_id = pcmis_contacts(client)
    with app.state.sessions.begin() as session:
        consent = get_resource(session, "Consent", consent_id({"reference": f"Patient/{patient_id}"}))
        assert consent is not None
        consent["provision"]["provision"].append({"type": "deny", "action": [{"text": CLIENT_COPY_ACTION}]})
        put_resource(session, {k: v for k, v in consent.items() if k != "meta"}, clock.now())
    request = letter_request("tt-copy-1", "tt-assessment-outcome", patient_id, [], recipients=[{"reference": f"Patient/{patient_id}"}])
    client.post("/fhir/CommunicationRequest", content=json.dumps(request))
    ((_, status),) = worker.deliver_once()
    assert status == "withheld" and not prints.exists()
    assert "prefers not to receive copies" in outbox(client)[0]["reason"]
    request_status = client.get("/fhir/CommunicationRequest").json()["entry"][0]["resource"]
    assert request_status["status"] == "revoked" and "consent" in request_status["statusReason"]["text"]
    worker.close()


def test_outbox_listing_refuses_an_unknown_status(client) -> None:
    reply = client.get("/outbox", params={"status": "lost"})
    assert reply.status_code == 400 and "unknown status" in reply.text
    assert client.get("/outbox/nope").status_code == 404
    assert client.post("/outbox/nope/$replay").status_code == 404
