"""BaRS $process-message: our own fixtures, NHS England's public examples, duplicates, headers."""

from __future__ import annotations

import json
import re
import uuid

from tests.conftest import BARS_EXAMPLES, bars_headers, fixture_bytes, issues, task_of

HTTP_ERROR_CODES = "https://fhir.nhs.uk/Codesystem/http-error-codes"


def _send(client, body: bytes, headers=None):  # type: ignore[no-untyped-def]
    return client.post("/fhir/$process-message", content=body, headers=headers or bars_headers())


def _error_code(outcome: dict) -> str:  # type: ignore[type-arg]
    return outcome["issue"][0]["details"]["coding"][0]["code"]


def test_bars_referral_is_acknowledged_with_a_response_message_and_queued_CAS_05(client) -> None:
    """CAS-05: bars referral is acknowledged with a response message and queued."""
    headers = bars_headers()
    response = _send(client, fixture_bytes("bars-dx335-immediate.bundle.json"), headers)
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == headers["X-Request-Id"]
    assert response.headers["x-correlation-id"] == headers["X-Correlation-Id"]
    reply = response.json()
    header = reply["entry"][0]["resource"]
    assert header["resourceType"] == "MessageHeader"
    assert header["eventCoding"] == {"system": "https://fhir.nhs.uk/CodeSystem/message-events-bars", "code": "servicerequest-response"}
    assert header["response"] == {"identifier": "9b7d3e1c-2f4a-4b8e-8c6d-1e2f3a4b5c02", "code": "ok"}
    assert header["destination"][0]["endpoint"] == "https://fhir.nhs.uk/Id/dos-service-id|2000099999"
    task = task_of(reply)
    assert task["priority"] == "stat"
    assert task["restriction"]["period"] == {"start": "2026-11-23T15:30:00Z", "end": "2026-11-23T15:50:00Z"}  # Dx335: 20 min
    assert client.get(f"/fhir/Task/{task['id']}").status_code == 200


def test_breach_time_is_never_later_than_the_senders_callback_deadline_CAS_05(client) -> None:
    """CAS-05: breach time is never later than the senders callback deadline."""
    task = task_of(_send(client, fixture_bytes("bars-dx13-self-harm-flag.bundle.json")).json())
    # Dx13 says 6 hours (20:00) but occurrencePeriod.end says 16:00
    assert task["restriction"]["period"]["end"] == "2026-11-23T16:00:00Z"
    assert task["priority"] == "asap"


def test_self_harm_safeguarding_flag_counts_as_a_red_flag_CAS_04(client) -> None:
    """CAS-04: self harm safeguarding flag counts as a red flag."""
    reply = _send(client, fixture_bytes("bars-dx13-self-harm-flag.bundle.json")).json()
    task = task_of(reply)
    assert task["businessStatus"]["coding"][0]["code"] == "urgent-cn-review"
    stored_task = client.get(f"/fhir/Task/{task['id']}").json()
    service_request = client.get(f"/fhir/{stored_task['focus']['reference']}").json()
    flag_ref = next(s["reference"] for s in service_request["supportingInfo"] if s["reference"].startswith("Flag/"))
    flag = client.get(f"/fhir/{flag_ref}").json()
    assert flag["code"]["coding"][0]["code"] == "401206008"


def test_resent_bars_message_gets_409_duplicate_and_creates_nothing(client, stored) -> None:
    headers = bars_headers()
    body = fixture_bytes("bars-dx335-immediate.bundle.json")
    assert _send(client, body, headers).status_code == 200
    before = stored()
    again = _send(client, body, headers)
    assert again.status_code == 409
    outcome = again.json()
    assert outcome["issue"][0]["code"] == "duplicate"
    assert outcome["issue"][0]["details"]["coding"][0] == {"system": HTTP_ERROR_CODES, "code": "REC_CONFLICT"}
    assert again.headers["x-request-id"] == headers["X-Request-Id"]
    assert stored() == before and before["Task"] == 1


def test_same_message_header_under_a_new_request_id_is_still_a_duplicate(client, stored) -> None:
    body = fixture_bytes("bars-dx335-immediate.bundle.json")
    assert _send(client, body).status_code == 200
    assert _send(client, body, bars_headers()).status_code == 409
    assert stored()["Task"] == 1


def test_missing_transaction_headers_are_refused_REC_BAD_REQUEST(client, stored) -> None:
    body = fixture_bytes("bars-dx335-immediate.bundle.json")
    response = client.post("/fhir/$process-message", content=body, headers={"X-Correlation-Id": str(uuid.uuid4())})
    assert response.status_code == 400
    assert _error_code(response.json()) == "REC_BAD_REQUEST"
    assert issues(response.json())[0][1] == "header:X-Request-Id"
    bad = client.post("/fhir/$process-message", content=body, headers={"X-Request-Id": "not-a-guid", "X-Correlation-Id": str(uuid.uuid4())})
    assert bad.status_code == 400 and "GUID" in issues(bad.json())[0][2]
    assert stored().get("Task", 0) == 0


def test_process_message_takes_post_only(client) -> None:
    response = client.get("/fhir/$process-message")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json()["resourceType"] == "OperationOutcome"


# --- NHS England's public examples (shared/research/bars-examples/README.md) --------------------


def test_public_validation_example_is_refused_naming_its_dx_code_and_nhs_number(client, stored) -> None:
    response = _send(client, (BARS_EXAMPLES / "servicerequest-request-validation.json").read_bytes())
    assert 400 <= response.status_code < 500
    found = issues(response.json())
    errors = {element: text for severity, element, text in found if severity == "error"}
    # routed by its destination DoS id (111111111 -> BNSSG), then Dx0122 has no callback timeframe there
    dx_element = "Bundle.entry[4].resource.activity[0].outcomeCodeableConcept[2].coding[0].code"
    assert "Dx0122" in errors[dx_element] and "bnssg" in errors[dx_element]
    # the example's NHS number 3478526985 fails modulus 11: said too, in the same reply
    assert "modulus 11" in errors["Bundle.entry[5].resource.identifier[0].value"]
    assert stored().get("Task", 0) == 0


def test_public_older_999_example_is_refused_with_its_defects_named_not_crashed(client, stored) -> None:
    response = _send(client, (BARS_EXAMPLES / "999-to-cas-servicerequest-older.json").read_bytes())
    assert response.status_code == 422
    outcome = response.json()
    assert _error_code(outcome) == "REC_UNPROCESSABLE_ENTITY"
    found = issues(outcome)
    elements = {element: (severity, text) for severity, element, text in found}
    assert elements["Bundle.entry[0].resource.eventCoding"][0] == "error"
    assert elements["Bundle.entry[0].resource.destination[0].endpoint"][0] == "error"
    # the real defects: a reference without urn:uuid:, and a non-UUID urn that resolves to nothing
    assert elements["Bundle.entry[1].resource.performer[0].reference"][0] == "warning"
    assert "lacks the 'urn:uuid:' prefix" in elements["Bundle.entry[1].resource.performer[0].reference"][1]
    assert elements["Bundle.entry[9].resource.organization.reference"] == (
        "warning",
        "reference 'urn:uuid:33a33b58-648a-4453-b981-e21ea9ggb4hj' is not a UUID and resolves to nothing",
    )
    assert stored().get("Task", 0) == 0


def test_public_older_111_example_with_a_trailing_comma_says_where_the_json_breaks(client, stored) -> None:
    raw = (BARS_EXAMPLES / "111-to-ed-servicerequest-older.not-valid-json.txt").read_bytes()
    response = _send(client, raw)
    assert response.status_code == 400
    assert _error_code(response.json()) == "REC_BAD_REQUEST"
    ((severity, element, text),) = issues(response.json())
    assert "line 710 column 21" in text and element == "Bundle"
    assert stored().get("Task", 0) == 0


def test_public_older_111_example_once_fixed_has_its_reasoncode_dx_understood(client) -> None:
    raw = (BARS_EXAMPLES / "111-to-ed-servicerequest-older.not-valid-json.txt").read_text()
    fixed = json.loads(re.sub(r",(\s*[}\]])", r"\1", raw))
    # give it what the older format lacks (a BaRS event and a destination) to reach the Dx rules
    header = fixed["entry"][0]["resource"]
    header["eventCoding"] = {"system": "https://fhir.nhs.uk/CodeSystem/message-events-bars", "code": "servicerequest-request"}
    header["destination"][0]["endpoint"] = "https://fhir.nhs.uk/Id/dos-service-id|2000070001"
    fixed["entry"][3]["resource"]["identifier"][0]["value"] = "9990000093"  # the example's number fails modulus 11
    response = _send(client, json.dumps(fixed).encode())
    assert response.status_code == 200, response.text
    task = task_of(response.json())
    # DX02 in ServiceRequest.reasonCode (https://fhir.nhs.uk/Id/pathways-dx-code) normalised to Dx02: 1 hour
    assert {"system": "https://fhir.nhs.uk/CodeSystem/pathways-dx-codes", "code": "Dx02"} in [i.get("valueCoding") for i in task["input"]]
    # the clock starts at the 111 call (Encounter.period.start 2021-02-19T07:15:00+10:00; no CarePlan sent)
    assert task["restriction"]["period"] == {"start": "2021-02-18T21:15:00Z", "end": "2021-02-18T22:15:00Z"}
    # accepted defects come back as warnings in MessageHeader.response.details
    header = response.json()["entry"][0]["resource"]
    outcome = next(e["resource"] for e in response.json()["entry"] if e["resource"]["resourceType"] == "OperationOutcome")
    assert header["response"]["details"]["reference"] == f"urn:uuid:{outcome['id']}"
    assert all(i["severity"] == "warning" for i in outcome["issue"])


def test_every_reference_in_the_message_is_checked_wherever_it_is_nested_and_named_by_its_path() -> None:
    """A dangling or malformed reference deep in an extension is warned about at its exact element;
    absolute URLs and contained references are left alone (adapters.bars_message.Message.check_all_references)."""
    from adapters.bars import parse_bars_message

    bundle = json.loads(fixture_bytes("bars-dx335-immediate.bundle.json"))
    index, request = next((i, e["resource"]) for i, e in enumerate(bundle["entry"]) if e["resource"]["resourceType"] == "ServiceRequest")
    dangling = f"urn:uuid:{uuid.uuid4()}"
    request["extension"] = [
        {"url": "https://example.org/a", "extension": [{"url": "b", "valueReference": {"reference": dangling}}]},
        {"url": "https://example.org/c", "valueReference": {"reference": "https://example.org/fhir/Practitioner/1"}},
        {"url": "https://example.org/d", "valueReference": {"reference": "#contained-1"}},
        {"url": "https://example.org/e", "valueReference": {"reference": "Practitioner/1\n"}},
    ]
    headers = bars_headers()
    referral = parse_bars_message(json.dumps(bundle).encode(), headers["X-Request-Id"], headers["X-Correlation-Id"])
    warned = {p.element: p.message for p in referral.problems if not p.is_error and "reference" in p.message}
    base = f"Bundle.entry[{index}].resource.extension"
    assert warned == {
        f"{base}[0].extension[0].valueReference.reference": f"reference {dangling!r} resolves to no entry in the Bundle",
        f"{base}[3].valueReference.reference": "reference 'Practitioner/1\\n' is neither urn:uuid nor Type/id",
    }


def test_a_dangling_reference_is_warned_about_however_the_json_spells_it() -> None:
    """The reference check reads references from the message text when it can (adapters.bars_message.Message._all_sound);
    a key or a value written with escapes must still have its dangling reference found, by the walk."""
    from adapters.bars import parse_bars_message

    bundle = json.loads(fixture_bytes("bars-dx335-immediate.bundle.json"))
    index, request = next((i, e["resource"]) for i, e in enumerate(bundle["entry"]) if e["resource"]["resourceType"] == "ServiceRequest")
    dangling = f"urn:uuid:{uuid.uuid4()}"
    request["extension"] = [{"url": "https://example.org/a", "valueReference": {"reference": dangling}}]
    element = f"Bundle.entry[{index}].resource.extension[0].valueReference.reference"
    plain = json.dumps(bundle)
    spellings = {
        "plain": plain.encode(),
        "escaped key": plain.replace(f'"reference": "{dangling}"', f'"\\u0072eference": "{dangling}"').encode(),
        "escaped value": plain.replace(f'"reference": "{dangling}"', '"reference": "' + dangling.replace("-", "\\u002d", 1) + '"').encode(),
    }
    assert spellings["escaped key"] != spellings["plain"] != spellings["escaped value"]
    headers = bars_headers()
    for spelling, raw in spellings.items():
        referral = parse_bars_message(raw, headers["X-Request-Id"], headers["X-Correlation-Id"])
        warned = {p.element: p.message for p in referral.problems if not p.is_error}
        assert warned.get(element) == f"reference {dangling!r} resolves to no entry in the Bundle", spelling
