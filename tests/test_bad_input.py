"""Bad input: each gets a 4xx OperationOutcome naming the element, and nothing is stored."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import bars_headers, fixture_bytes, fixture_json, issues

CASE = "option2-standard.case.json"
BARS = "bars-dx335-immediate.bundle.json"


def _case(**changes: Any) -> bytes:
    data = fixture_json(CASE)
    for dotted, value in changes.items():
        target = data
        *path, last = dotted.split("__")
        for part in path:
            target = target[part]
        if value is _DELETE:
            del target[last]
        else:
            target[last] = value
    return json.dumps(data).encode()


_DELETE = object()


def _bars(mutate) -> bytes:  # type: ignore[no-untyped-def]
    bundle = fixture_json(BARS)
    mutate(bundle)
    return json.dumps(bundle).encode()


def _entry(bundle: dict[str, Any], rtype: str) -> dict[str, Any]:
    return next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype)


def _assert_refused(response, status: int, element: str, words: str, stored) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    found = [(e, d) for s, e, d in issues(response.json()) if s == "error"]
    assert any(e == element and words in d for e, d in found), found
    counts = stored()
    assert counts.get("Task", 0) == 0 and counts.get("Patient", 0) == 0 and counts["InboundMessage"] == 0


FLAT_CASES = [
    pytest.param(b'{"case_id": "X1", "channel": ', "$", "line 1 column 30", 400, id="malformed-json"),
    pytest.param(b"[1, 2]", "$", "expected a JSON object", 400, id="not-an-object"),
    pytest.param(b'{"resourceType": "Patient"}', "resourceType", "not a FHIR Patient", 400, id="fhir-resource-on-flat-endpoint"),
    pytest.param(_case(patient__nhs_number=_DELETE), "patient.nhs_number", "Field required", 400, id="missing-nhs-number"),
    pytest.param(_case(patient__nhs_number="9990000019"), "patient.nhs_number", "modulus 11", 400, id="invalid-nhs-number"),
    pytest.param(_case(patient__nhs_number="99900000"), "patient.nhs_number", "10 digits", 400, id="short-nhs-number"),
    pytest.param(
        _case(channel="111-option-1"), "pathways.dx", "must carry its disposition (Dx) code (CAS-05)", 400, id="option1-without-dx"
    ),
    pytest.param(
        _case(channel="111-option-1", pathways={"dx": "Dx0122"}), "pathways.dx", "Dx0122 has no callback timeframe", 422, id="unknown-dx"
    ),
    pytest.param(
        _case(channel="111-online", pathways={"dx": "Pathways-12"}), "pathways.dx", "not an NHS Pathways Dx code", 400, id="not-a-dx-code"
    ),
    pytest.param(_case(call_time="2026-11-23T09:15:00"), "call_time", "no timezone offset", 400, id="date-without-timezone"),
    pytest.param(_case(call_time="2026-02-31T09:15:00Z"), "call_time", "not a real date-time", 400, id="impossible-date"),
    pytest.param(_case(destination_dos_id="999999"), "destination_dos_id", "'999999' is not a service", 422, id="unknown-destination"),
    pytest.param(_case(channel="111-option-3"), "channel", "must be one of", 400, id="unknown-channel"),
    pytest.param(
        _case(red_flags=[{"id": "rf-1", "question": "q?", "answer": "maybe"}]),
        "red_flags[0].answer",
        "boolean",
        400,
        id="red-flag-answer-not-boolean",
    ),
    pytest.param(_case(patient__given=["Sam", " "]), "patient.given[1]", "at least 1 character", 400, id="empty-given-name"),
]


@pytest.mark.parametrize(("body", "element", "words", "status"), FLAT_CASES)
def test_bad_flat_case_is_refused_naming_the_element_and_stores_nothing(client, stored, body, element, words, status) -> None:
    response = client.post("/ingest/nhs111", content=body)
    _assert_refused(response, status, element, words, stored)


def _no_nhs_number(b):  # type: ignore[no-untyped-def]
    _entry(b, "Patient")["identifier"] = []


def _bad_nhs_number(b):  # type: ignore[no-untyped-def]
    _entry(b, "Patient")["identifier"][0]["value"] = "9990000019"


def _no_dx(b):  # type: ignore[no-untyped-def]
    _entry(b, "CarePlan")["activity"][0]["outcomeCodeableConcept"] = [{"text": "no codes"}]


def _unknown_dx(b):  # type: ignore[no-untyped-def]
    _entry(b, "CarePlan")["activity"][0]["outcomeCodeableConcept"][2]["coding"][0]["code"] = "DX999"


def _naive_date(b):  # type: ignore[no-untyped-def]
    _entry(b, "CarePlan")["period"]["start"] = "2026-11-23T15:30:00"


def _unknown_destination(b):  # type: ignore[no-untyped-def]
    b["entry"][0]["resource"]["destination"][0]["endpoint"] = "https://fhir.nhs.uk/Id/dos-service-id|123"


def _wrong_first_entry(b):  # type: ignore[no-untyped-def]
    b["entry"].reverse()


def _dangling_focus(b):  # type: ignore[no-untyped-def]
    b["entry"][0]["resource"]["focus"][0]["reference"] = "urn:uuid:00000000-0000-4000-8000-000000000000"


CARE_PLAN = "Bundle.entry[4].resource"
BARS_CASES = [
    pytest.param(lambda b: b.update(resourceType="Parameters"), "resourceType", "expected a Bundle", 400, id="wrong-resource-type"),
    pytest.param(lambda b: b.update(type="collection"), "Bundle.type", "type 'message'", 400, id="not-a-message-bundle"),
    pytest.param(_wrong_first_entry, "Bundle.entry[0].resource", "bdl-12", 400, id="messageheader-not-first"),
    pytest.param(_dangling_focus, "Bundle.entry[0].resource.focus[0]", "resolves to no entry", 400, id="dangling-focus"),
    pytest.param(_no_nhs_number, "Bundle.entry[5].resource.identifier", "NHS number", 400, id="missing-nhs-number"),
    pytest.param(_bad_nhs_number, "Bundle.entry[5].resource.identifier[0].value", "modulus 11", 400, id="invalid-nhs-number"),
    pytest.param(_no_dx, f"{CARE_PLAN}.activity.outcomeCodeableConcept", "no NHS Pathways disposition", 400, id="missing-dx"),
    pytest.param(
        _unknown_dx,
        f"{CARE_PLAN}.activity[0].outcomeCodeableConcept[2].coding[0].code",
        "Dx999 has no callback timeframe",
        422,
        id="unknown-dx",
    ),
    pytest.param(_naive_date, f"{CARE_PLAN}.period.start", "no timezone offset", 400, id="date-without-timezone"),
    pytest.param(
        _unknown_destination, "Bundle.entry[0].resource.destination[0].endpoint", "'123' is not a service", 422, id="unknown-destination"
    ),
]


@pytest.mark.parametrize(("mutate", "element", "words", "status"), BARS_CASES)
def test_bad_bars_message_is_refused_naming_the_element_and_stores_nothing(client, stored, mutate, element, words, status) -> None:
    response = client.post("/fhir/$process-message", content=_bars(mutate), headers=bars_headers())
    _assert_refused(response, status, element, words, stored)


def test_body_over_the_size_limit_is_refused_413(client, stored, settings) -> None:
    big = fixture_bytes(CASE).replace(b'"free_text": "', b'"free_text": "' + b"x" * (settings.max_body_bytes + 1))
    response = client.post("/ingest/nhs111", content=big)
    _assert_refused(response, 413, "body", "limit", stored)
    response = client.post("/fhir/$process-message", content=big, headers=bars_headers())
    _assert_refused(response, 413, "body", "limit", stored)


def test_empty_body_is_refused(client, stored) -> None:
    _assert_refused(client.post("/ingest/nhs111", content=b""), 400, "body", "empty", stored)


def test_unknown_fields_are_kept_as_warnings_not_dropped_silently(client) -> None:
    response = client.post("/ingest/nhs111", content=_case(triage_colour="amber", patient__shoe_size=9))
    assert response.status_code == 201
    outcome = response.json()["entry"][0]["response"]["outcome"]
    assert [(s, e) for s, e, _ in issues(outcome)] == [("warning", "triage_colour"), ("warning", "patient.shoe_size")]


def test_crash_mid_request_stores_nothing(client, stored, monkeypatch) -> None:
    import gateway.cas.intake

    def explode(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("disk on fire")

    # the reply is built inside the transaction, after the resources are written: crash there
    monkeypatch.setattr(gateway.cas.intake, "batch_response", explode)
    response = client.post("/ingest/nhs111", content=fixture_bytes(CASE))
    assert response.status_code == 500
    ((severity, _, text),) = issues(response.json())
    assert severity == "error" and "nothing was stored" in text
    assert response.json()["issue"][0]["details"]["coding"][0]["code"] == "REC_SERVER_ERROR"
    assert stored() == {"InboundMessage": 0}
    monkeypatch.undo()
    assert client.post("/ingest/nhs111", content=fixture_bytes(CASE)).status_code == 201  # and the re-send then lands
