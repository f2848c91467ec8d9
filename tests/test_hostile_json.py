"""JSON built to break a reader: nested 100,000 deep, a key twice, numbers JSON has no value for. Never a 500.

Every body-taking route reads JSON with the one reader (adapters/jsonparse.py): too deep a nesting (past
MAX_DEPTH) is a 400 naming its line and column, a duplicate key a 400 naming the key's element, NaN, Infinity and
1e400 a 400 naming where; nothing is stored. A signed client assertion whose `exp` is no time (1e300, NaN) is an
`invalid_request`. The first test walks the app's own OpenAPI description, so a route added later is covered
without anyone remembering to add it here. On SQLite and PostgreSQL (the `app` fixture).
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from jwt.api_jws import PyJWS

from adapters.jsonparse import MAX_DEPTH
from gateway.platform.security.clients import add_client
from tests.conftest import NOW, ROOT, bars_headers, issues
from tests.hostile import filled_paths
from tests.test_cas_operations import new_case
from tests.test_pathway_api import tt_episode
from tests.test_security import TOKEN_URL, _token_request, jwt_client, signing_key  # noqa: F401 (fixtures)


def _nested(depth: int, opener: bytes = b"[", closer: bytes = b"]", inner: bytes = b"") -> bytes:
    return opener * depth + inner + closer * depth


def _parameters_with(number: bytes) -> bytes:
    """A Parameters-shaped object holding `number` (as written) twice: as a parameter value and at its top level."""
    return b'{"resourceType":"Parameters","parameter":[{"name":"n","valueInteger":%s}],"n":%s}' % (number, number)


# What each write route is sent, by name: the body and the content type (None: the route's own from the description)
HOSTILE: dict[str, bytes] = {
    "arrays-100000-deep": _nested(100_000),
    "objects-20000-deep": _nested(20_000, b'{"a":', b"}", b"1"),
    "mixed-past-the-limit": b'{"resourceType":"Parameters","parameter":' + _nested(MAX_DEPTH // 2 + 1, b'[{"part":', b"}]", b"[]") + b"}",
    "at-the-limit": b'{"resourceType":"Parameters","parameter":' + _nested(MAX_DEPTH - 1, b"[", b"]") + b"}",
    "duplicate-key": b'{"resourceType":"Parameters","resourceType":"Parameters","parameter":[]}',
    "duplicate-key-nested": b'{"resourceType":"Parameters","parameter":[{"name":"a","name":"b","valueString":"x"}]}',
    "1e400": _parameters_with(b"1e400"),
    "-1e400": _parameters_with(b"-1e400"),
    "NaN": _parameters_with(b"NaN"),
    "Infinity": _parameters_with(b"Infinity"),
    "-Infinity": _parameters_with(b"-Infinity"),
    "minus-zero": _parameters_with(b"-0"),
    "minus-zero-float": _parameters_with(b"-0.0"),
    "huge-int": _parameters_with(b"1" + b"0" * 30),
    "int-of-5000-digits": _parameters_with(b"9" * 5000),
    "tiny-float": _parameters_with(b"1e-400"),
}


def _write_operations(client: TestClient) -> list[tuple[str, str, str]]:
    """(method, path template, content type) of every operation in /openapi.json that takes a body (or could)."""
    description = client.get("/openapi.json").json()
    found: list[tuple[str, str, str]] = []
    for template, operations in description["paths"].items():
        for method, operation in operations.items():
            if method in ("post", "put", "patch"):
                content = operation.get("requestBody", {}).get("content", {"application/json": {}})
                found.extend((method.upper(), template, media) for media in content)
    return found


def test_every_write_route_in_the_api_description_answers_hostile_json_without_a_server_error(client) -> None:
    operations = _write_operations(client)
    assert {t for _, t, _ in operations} >= {"/ingest/nhs111", "/fhir/QuestionnaireResponse", "/fhir/ServiceRequest/$route"}
    failures = []
    for method, template, media in operations:
        for url in filled_paths(template):
            for name, body in HOSTILE.items():
                headers = {"Content-Type": media} | (bars_headers() if "process-message" in url else {})
                response = client.request(method, url, content=body, headers=headers)
                kind = response.headers.get("content-type", "")
                if response.status_code >= 500:
                    failures.append(f"{method} {url} {name}: {response.status_code} {response.text[:160]}")
                elif response.status_code >= 400 and kind.startswith("application/fhir+json"):
                    assert response.json()["resourceType"] == "OperationOutcome", (url, name, response.text[:200])
    assert failures == []


# Each JSON route with a document it takes (tests/test_odd_values.py's list) and the name its reader gives the body
JSON_ROUTES = [
    ("/ingest/nhs111", "nhs111/option2-red-flag.case.json", "$"),
    ("/ingest/mhpl", "mhpl/police-call.mhpl.json", "$"),
    ("/ingest/cleo", "cleo/consultation-registered.update.json", "$"),
    ("/fhir/$process-message", "nhs111/bars-dx13-self-harm-flag.bundle.json", "Bundle"),
    ("/fhir/ServiceRequest/$route", "pathways/tt-gp-referral-step-3.servicerequest.json", "ServiceRequest"),
    ("/fhir/QuestionnaireResponse", "measures/phq-9-lhc-forms.qr.json", "QuestionnaireResponse"),
]


def _post(client: TestClient, url: str, body: bytes) -> Any:
    headers = bars_headers() if "process-message" in url else {"Content-Type": "application/fhir+json"}
    return client.post(url, content=body, headers=headers)


def _refused_400(response: Any, element: str, *words: str) -> None:
    assert response.status_code == 400, response.text[:300]
    found = [(e, d) for s, e, d in issues(response.json()) if s == "error"]
    assert any(e == element and all(w in d for w in words) for e, d in found), found


@pytest.mark.parametrize(("url", "name", "what"), JSON_ROUTES)
def test_json_nested_100000_deep_is_refused_400_naming_where_and_stores_nothing(client, stored, url: str, name: str, what: str) -> None:
    before = stored()
    response = _post(client, url, _nested(100_000))
    _refused_400(response, what, f"nested more than {MAX_DEPTH} arrays and objects deep at line 1 column {MAX_DEPTH + 1} ")
    assert stored() == before


@pytest.mark.parametrize(("url", "name", "what"), JSON_ROUTES)
def test_a_document_nested_past_the_limit_inside_an_element_is_refused_400(client, stored, url: str, name: str, what: str) -> None:
    document = json.loads((ROOT / "fixtures" / name).read_text())
    text = json.dumps(document | {"extension": "@@"}).replace('"@@"', "[" * MAX_DEPTH + "]" * MAX_DEPTH)
    before = stored()
    _refused_400(_post(client, url, text.encode()), what, f"nested more than {MAX_DEPTH}", "line 1 column")
    assert stored() == before


@pytest.mark.parametrize(("url", "name", "what"), JSON_ROUTES)
def test_a_key_sent_twice_in_one_object_is_refused_400_naming_it_and_stores_nothing(client, stored, url: str, name: str, what: str) -> None:
    """Before: the last value won, silently (a sender's first value was lost). FHIR JSON forbids duplicate keys."""
    document = json.loads((ROOT / "fixtures" / name).read_text())
    key = next(k for k in document if k != "resourceType")
    body = "{" + json.dumps(key) + ":" + json.dumps(document[key]) + "," + json.dumps(document)[1:]
    before = stored()
    _refused_400(_post(client, url, body.encode()), f"{what}.{key}", f"key {key!r} appears twice in one object")
    assert stored() == before


def test_a_key_sent_twice_deep_in_a_bars_message_is_named_by_its_path(client, stored) -> None:
    bundle = json.loads((ROOT / "fixtures" / "nhs111" / "bars-dx13-self-harm-flag.bundle.json").read_text())
    assert "status" in bundle["entry"][1]["resource"]
    bundle["entry"][1]["resource"] = {"@@": 1} | bundle["entry"][1]["resource"]
    body = json.dumps(bundle).replace('"@@": 1', '"status": "cancelled"', 1)  # and its own status after it
    before = stored()
    _refused_400(_post(client, "/fhir/$process-message", body.encode()), "Bundle.entry[1].resource.status", "appears twice")
    assert stored() == before


@pytest.mark.parametrize("literal", ["1e400", "-1e400", "NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize(("url", "name", "what"), JSON_ROUTES)
def test_a_number_json_cannot_carry_is_refused_400_naming_where(client, stored, url: str, name: str, what: str, literal: str) -> None:
    """1e400 was read as inf by the standard library's reader (and NaN and Infinity are no JSON at all)."""
    document = json.loads((ROOT / "fixtures" / name).read_text())
    text = json.dumps(document | {"extension": "@@"})
    at = text.index('"@@"')
    before = stored()
    response = _post(client, url, text.replace('"@@"', literal).encode())
    _refused_400(response, what, f"{literal} is not a number JSON can carry at line 1 column {at + 1} (char {at})")
    assert stored() == before


def test_case_and_episode_operations_refuse_hostile_json_400_and_change_nothing(client) -> None:
    task, episode = new_case(client), tt_episode(client)
    urls = {"Parameters": [f"/fhir/Task/{task['id']}/$record-contact-attempt", f"/fhir/EpisodeOfCare/{episode}/$record-contact"]}
    before = [client.get(f"/fhir/Task/{task['id']}").json(), client.get(f"/fhir/EpisodeOfCare/{episode}").json()]
    for url in urls["Parameters"]:
        _refused_400(_post(client, url, _nested(100_000)), "Parameters", f"nested more than {MAX_DEPTH}")
        _refused_400(_post(client, url, HOSTILE["duplicate-key-nested"]), "Parameters.parameter[0].name", "appears twice")
        _refused_400(_post(client, url, HOSTILE["1e400"]), "Parameters", "1e400 is not a number JSON can carry at line 1")
    assert [client.get(f"/fhir/Task/{task['id']}").json(), client.get(f"/fhir/EpisodeOfCare/{episode}").json()] == before


# -- the token endpoint: a client assertion's claims are JSON too ----------------------------------------------------


def _signed(key: Any, client_id: str, exp: bytes, extra: bytes = b"") -> str:
    """A correctly signed RS512 assertion whose claims are these bytes (so `exp` can be written as no encoder would)."""
    claims = b'{"iss":"%s","sub":"%s","aud":"%s","jti":"j-%s","exp":%s%s}' % (
        client_id.encode(),
        client_id.encode(),
        TOKEN_URL.encode(),
        uuid.uuid4().hex.encode(),
        exp,
        extra,
    )
    return PyJWS().encode(claims, key, algorithm="RS512", headers={"kid": "test-1"})


@pytest.mark.parametrize("exp", [b"1e300", b"-1e300", b"1" + b"0" * 400, b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_a_signed_assertion_whose_exp_is_no_time_is_an_invalid_request(anonymous, jwt_client, signing_key, exp: bytes) -> None:  # noqa: F811
    """exp = 1e300, NaN or Infinity was an OverflowError or ValueError in datetime (a 500)."""
    response = _token_request(anonymous, _signed(signing_key, jwt_client, exp))
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_request"


def test_a_signed_assertion_with_a_claim_twice_is_an_invalid_request(anonymous, jwt_client, signing_key) -> None:  # noqa: F811
    """The last `iss` would have won; the one reader refuses the claims whole, naming the key."""
    exp = b"%d" % (NOW + timedelta(minutes=3)).timestamp()
    assert _token_request(anonymous, _signed(signing_key, jwt_client, exp)).status_code == 200  # as sent, but once
    response = _token_request(anonymous, _signed(signing_key, jwt_client, exp, b',"iss":"someone-else"'))
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "invalid_request" and "'iss' appears twice" in body["error_description"]


@pytest.mark.parametrize("export", ["pcmis", "systmone"])
def test_a_csv_field_longer_than_the_csv_reader_takes_is_refused_400_naming_its_row(client, stored, export: str) -> None:
    """Python's csv module reads fields of up to 131,072 characters; a longer one was csv.Error, a 500."""
    header = (ROOT / "fixtures" / export / "contacts.csv").read_bytes().splitlines()[0]
    before = stored()
    for body, element in ((b'"' + b"x" * 140_000 + b'"\n', "file"), (header + b'\n"' + b"x" * 140_000 + b'"\n', "row[1]")):
        response = client.post(f"/ingest/{export}", content=body, headers={"Content-Type": "text/csv"})
        _refused_400(response, element, "cannot be read as CSV: field larger than field limit")
    assert stored() == before


@pytest.mark.parametrize(
    ("jwks", "says"),
    [
        ('{"keys":' + "[" * 100_000 + "]" * 100_000 + "}", "nested more than 100"),
        ('{"keys":[],"keys":[]}', "'keys' appears twice"),
        ('{"keys":[{"kty":"RSA","e":1e400}]}', "1e400 is not a number"),
    ],
    ids=["deep", "duplicate-key", "1e400"],
)
def test_a_client_registered_with_a_hostile_jwks_is_refused_with_a_reason(app, jwks: str, says: str) -> None:
    """`clients add --jwks`: the key set is read by the one reader too (100,000 deep was a RecursionError)."""
    with app.state.sessions.begin() as session, pytest.raises(ValueError, match=says):
        add_client(session, "hostile-jwks", frozenset({"fhir:read"}), NOW, jwks=jwks)
