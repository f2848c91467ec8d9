"""A different message is never taken for a re-send (issue 31): a re-send is the same id AND the same content.

The same id with other content is the sender's error, answered as such on every channel (BaRS 422 naming the id it
reuses, the flat JSON 422 naming its case or call id, HL7 v2 AE naming MSH-10), stores nothing, is counted in
iap_message_id_reuses_total and logged without values. The same message again, however re-serialised (HL7 v2: with a
new MSH-7 time), still gets its original answer.
"""

from __future__ import annotations

import copy
import itertools
import json
import socket
import uuid
from typing import Any

import httpx
import pytest

from adapters.hl7v2 import frame
from tests.conftest import bars_headers, fixture_bytes, fixture_json, issues, metric_value, task_of
from tests.test_concurrency import _burst
from tests.test_hl7v2 import err, msa, post, read_acks, rio, running_mllp

REUSES = "iap_message_id_reuses_total"


def _reuses(client: Any, source: str) -> float:
    return metric_value(client.get("/metrics").text, REUSES, source=source)


def _logged(capsys: Any, event: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    return [line for line in lines if line["event"] == event]


def _bars(client: Any, body: dict[str, Any] | bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post("/fhir/$process-message", content=raw, headers=headers or bars_headers())


def _another_referral(body: dict[str, Any]) -> dict[str, Any]:
    """A new referral made from the same template: its own Bundle id and disposition, the template's MessageHeader."""
    other = copy.deepcopy(body)
    other["id"] = str(uuid.uuid4())
    for entry in other["entry"]:
        if entry["resource"]["resourceType"] == "CarePlan":
            entry["resource"]["activity"][0]["outcomeCodeableConcept"][2]["coding"][0]["code"] = "Dx14"
    return other


def _refused_for_reusing(response: httpx.Response, element: str) -> None:
    assert response.status_code == 422, response.text
    outcome = response.json()
    assert outcome["issue"][0]["details"]["coding"][0]["code"] == "REC_UNPROCESSABLE_ENTITY"
    ((severity, where, text),) = issues(outcome)
    assert (severity, where) == ("error", element)
    assert "different content" in text and "nothing of this one was stored" in text
    assert "x-duplicate-of" not in response.headers


# --- BaRS ---------------------------------------------------------------------------------------------------


def test_a_new_bars_referral_reusing_an_accepted_message_header_id_is_refused_422_naming_it(client, stored, capsys) -> None:
    """NHS England's example messages share one MessageHeader fullUrl: a sender built from them reuses it. Its second
    referral was answered 409 'already processed' (and BaRS senders never retry after a 409): it was lost unsaid."""
    body = fixture_json("bars-dx335-immediate.bundle.json")
    assert _bars(client, body).status_code == 200
    before, counted = stored(), _reuses(client, "bars")
    capsys.readouterr()

    other = _another_referral(body)
    _refused_for_reusing(_bars(client, other), "MessageHeader.id")
    assert stored() == before
    assert _reuses(client, "bars") == counted + 1
    (logged,) = _logged(capsys, "message.id_reused")
    assert logged["channel"] == "bars" and logged["element"] == "MessageHeader.id"
    assert other["entry"][0]["fullUrl"][9:] not in json.dumps(logged) and other["id"] not in json.dumps(logged)

    other["entry"][0]["fullUrl"] = f"urn:uuid:{uuid.uuid4()}"  # given its own MessageHeader id, the referral is taken
    assert _bars(client, other).status_code == 200
    assert stored()["Task"] == before["Task"] + 1


def test_a_different_bars_message_under_an_accepted_x_request_id_is_refused_422_naming_the_header(client, stored) -> None:
    headers = bars_headers()
    body = fixture_json("bars-dx335-immediate.bundle.json")
    assert _bars(client, body, headers).status_code == 200
    before = stored()
    other = _another_referral(body)
    other["entry"][0]["fullUrl"] = f"urn:uuid:{uuid.uuid4()}"
    _refused_for_reusing(_bars(client, other, headers), "header:X-Request-Id")
    assert stored() == before


def test_a_bars_message_sent_again_re_serialised_is_still_a_duplicate_409(client, stored) -> None:
    headers = bars_headers()
    raw = fixture_bytes("bars-dx335-immediate.bundle.json")
    assert _bars(client, raw, headers).status_code == 200
    before = stored()
    again = json.dumps(json.loads(raw), indent=3, sort_keys=True).encode()  # other spacing, other key order
    assert again != raw
    for resent in (_bars(client, again, headers), _bars(client, again)):  # under its X-Request-Id, and under a new one
        assert resent.status_code == 409, resent.text
        assert resent.json()["issue"][0]["code"] == "duplicate"
    assert stored() == before


# --- the flat JSON formats (NHS 111 case, MHPL call) -------------------------------------------------------

FLAT = [
    pytest.param("/ingest/nhs111", "option2-standard.case.json", "case_id", "nhs111", id="nhs111-case"),
    pytest.param("/ingest/mhpl", "../mhpl/police-call.mhpl.json", "call_id", "mhpl", id="mhpl-call"),
]


@pytest.mark.parametrize(("path", "fixture", "element", "source"), FLAT)
def test_a_different_case_sent_with_an_accepted_case_id_is_refused_422_naming_the_id_and_stores_nothing(
    client, stored, capsys, path: str, fixture: str, element: str, source: str
) -> None:
    """It got the original reply (201, the original Task) and its content was lost."""
    case = fixture_json(fixture)
    first = client.post(path, content=json.dumps(case))
    assert first.status_code == 201, first.text
    task = client.get(f"/fhir/Task/{task_of(first.json())['id']}").json()
    before, counted = stored(), _reuses(client, source)
    capsys.readouterr()

    different = dict(case, call_time="2026-11-23T10:45:00+00:00")  # another call under the same id
    _refused_for_reusing(client.post(path, content=json.dumps(different)), element)
    assert stored() == before
    assert client.get(f"/fhir/Task/{task['id']}").json() == task
    assert _reuses(client, source) == counted + 1
    (logged,) = _logged(capsys, "message.id_reused")
    assert logged["element"] == element and case[element] not in json.dumps(logged)


@pytest.mark.parametrize(("path", "fixture", "element", "source"), FLAT)
def test_the_same_case_re_serialised_is_a_resend_and_gets_its_original_reply(
    client, stored, path: str, fixture: str, element: str, source: str
) -> None:
    raw = fixture_bytes(fixture)
    first = client.post(path, content=raw)
    assert first.status_code == 201, first.text
    before, counted = stored(), _reuses(client, source)
    again = client.post(path, content=json.dumps(json.loads(raw), sort_keys=True, ensure_ascii=False).encode())
    assert again.status_code == 201 and again.content == first.content and again.headers["x-duplicate-of"]
    assert stored() == before and _reuses(client, source) == counted


def test_different_cases_racing_under_one_case_id_store_one_and_refuse_every_other_422(server_url, stored, all_scopes_key) -> None:
    """Whether a copy finds the first stored before it starts or loses the race on the unique key, it is refused."""
    case = fixture_json("option2-standard.case.json")
    minutes = itertools.count()  # next() on it is atomic: one minute per sender

    def send(http: httpx.Client) -> httpx.Response:
        different = dict(case, call_time=f"2026-11-23T09:{next(minutes):02d}:00+00:00")
        return http.post(f"{server_url}/ingest/nhs111", content=json.dumps(different))

    replies = _burst(send, all_scopes_key)
    statuses = sorted(r.status_code for r in replies)
    assert statuses == [201] + [422] * (len(replies) - 1), [r.text for r in replies if r.status_code not in (201, 422)][:1]
    assert all(issues(r.json())[0][1] == "case_id" for r in replies if r.status_code == 422)
    counts = stored()
    assert counts["Task"] == 1 and counts["InboundMessage"] == 1


# --- HL7 v2 ---------------------------------------------------------------------------------------------------


def _other_content(message: bytes) -> bytes:
    """The same control id on another message: another patient's name and another referral reason."""
    return message.replace(b"Demo^Riley", b"Demo^Robin").replace(b"RIO-REF-9001", b"RIO-REF-9002")


def _new_send_time(message: bytes) -> bytes:
    """The same message as an engine retrying it may send it: a new MSH-7 and LF segment ends."""
    return message.replace(b"|20261123120000+0000||REF^I12", b"|20261123120500+0000||REF^I12", 1).replace(b"\r", b"\n")


def test_an_hl7_message_reusing_an_accepted_control_id_gets_AE_naming_MSH_10_over_mllp(app, client, stored, capsys) -> None:
    """It got the original ACK (AA) and was never processed. The same message again, stamped with a new send time,
    is still a re-send: its original ACK."""
    message = rio("ref-i12-referral.hl7")
    assert _new_send_time(message) != message and _other_content(message) != message
    with running_mllp(app) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(frame(message))
        (first,) = read_acks(sock, 1)
        before, counted = stored(), _reuses(client, "hl7v2")
        capsys.readouterr()
        sock.sendall(frame(_other_content(message)) + frame(_new_send_time(message)))
        reused, resent = read_acks(sock, 2)
    assert msa(first)[1:3] == ["AA", "RIO-REF-0001"]
    assert msa(reused)[1:3] == ["AE", "RIO-REF-0001"] and "MSH-10" in msa(reused)[3]
    assert err(reused).startswith("ERR|MSH^1^10^205&")
    assert resent == first
    assert stored() == before
    assert _reuses(client, "hl7v2") == counted + 1
    (logged,) = _logged(capsys, "message.id_reused")
    assert logged["channel"] == "hl7v2" and logged["element"] == "MSH-10" and "RIO-REF-0001" not in json.dumps(logged)


def test_an_hl7_message_reusing_an_accepted_control_id_gets_AE_naming_MSH_10_over_http(client, stored) -> None:
    message = rio("ref-i12-referral.hl7")
    first = post(client, message)
    before = stored()
    reused = post(client, _other_content(message))
    assert reused.headers["x-hl7-ack-code"] == "AE" and err(reused.content).startswith("ERR|MSH^1^10^205&")
    assert post(client, _new_send_time(message)).content == first.content
    assert stored() == before


# The other JSON channels keyed on a sender's id: a CLEO update id, a pathway referral's identifier, a measure's identifier
def _cleo_case(client: Any) -> bytes:
    from tests.test_cleo import update

    return update(task_of(client.post("/ingest/nhs111", content=fixture_bytes("option2-standard.case.json")).json())["id"])


def _measure(client: Any) -> bytes:
    body = fixture_json("../measures/phq-9-lhc-forms.qr.json") | {
        "identifier": {"system": "https://pcmis.example.nhs.uk/qr", "value": "QR-0001"}
    }
    return json.dumps(body).encode()


def _pathway_referral(client: Any) -> bytes:
    return fixture_bytes("../pathways/tt-gp-referral-step-3.servicerequest.json")


def _changed(raw: bytes, path: str, value: Any) -> bytes:
    body = json.loads(raw)
    body[path] = value
    return json.dumps(body, indent=1).encode()


REUSING_CHANNELS = {
    # channel: (url, first message, (element changed, new value), element a reuse is refused naming, metric source)
    "cleo": ("/ingest/cleo", _cleo_case, ("notes", "Synthetic: another consultation entirely."), "update_id"),
    "measure": ("/fhir/QuestionnaireResponse", _measure, ("authored", "2026-11-24T09:00:00+00:00"), "QuestionnaireResponse.identifier"),
    "pathway": ("/fhir/ServiceRequest/$route", _pathway_referral, ("authoredOn", "2026-11-03T09:00:00+00:00"), "ServiceRequest.identifier"),
}


@pytest.mark.parametrize("channel", sorted(REUSING_CHANNELS))
def test_a_different_json_message_reusing_a_cleo_pathway_or_measure_id_is_refused_422_and_a_resend_is_answered(
    client, stored, channel: str
) -> None:
    url, first, (element, value), named = REUSING_CHANNELS[channel]
    raw = first(client)
    accepted = client.post(url, content=raw)
    assert accepted.status_code in (200, 201), accepted.text
    before = stored()
    again = client.post(url, content=json.dumps(json.loads(raw), indent=2).encode())  # the same message, re-serialised
    assert again.status_code == accepted.status_code and again.headers.get("x-duplicate-of")
    assert again.json() == accepted.json()
    refused = client.post(url, content=_changed(raw, element, value))
    _refused_for_reusing(refused, named)
    assert stored() == before
