"""Authentication and authorisation: every route needs a credential; each client role reaches only its scopes.

Unauthenticated -> 401, not allowed -> 403, both FHIR OperationOutcomes, both audited. API keys and
signed JWT client assertions (NHS England's pattern: RS512, kid, iss = sub, aud, exp <= 5 min, jti once).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from jwt.algorithms import RSAAlgorithm

from gateway.platform.security.clients import ClientError, add_client, revoke_client, rotate_api_key
from gateway.platform.security.scopes import ADMIN, DEFAULT_RULE, ROUTES, SCOPES, rule_for
from tests.conftest import NOW, ROOT, bars_headers, bearer, fixture_bytes, issues, task_of
from tests.letter_helpers import letter_request
from tests.test_cas_operations import params
from tests.test_cleo import update

RIO = ROOT / "fixtures" / "rio"
TOKEN_URL = "http://testserver/oauth2/token"


# one request per endpoint family, and the scopes that allow it (any one); headers: "bars" = the BaRS headers, None = none
FAMILIES: dict[str, tuple[str, str, bytes | None, Literal["bars"] | None, str]] = {
    "nhs111 case": ("POST", "/ingest/nhs111", fixture_bytes("option2-standard.case.json"), None, "ingest:nhs111"),
    "bars message": ("POST", "/fhir/$process-message", fixture_bytes("bars-dx13-self-harm-flag.bundle.json"), "bars", "ingest:nhs111"),
    "mhpl call": ("POST", "/ingest/mhpl", (ROOT / "fixtures/mhpl/police-call.mhpl.json").read_bytes(), None, "ingest:mhpl"),
    "hl7v2 message": ("POST", "/ingest/hl7v2", (RIO / "adt-a04-register.hl7").read_bytes(), None, "ingest:hl7v2"),
    "pcmis export": ("POST", "/ingest/pcmis", (ROOT / "fixtures/pcmis/contacts.csv").read_bytes(), None, "ingest:pcmis"),
    "systmone extract": ("POST", "/ingest/systmone", (ROOT / "fixtures/systmone/contacts.csv").read_bytes(), None, "ingest:systmone"),
    "cleo update": ("POST", "/ingest/cleo", update("no-such-case"), None, "ingest:cleo"),
    "cleo export": ("GET", "/export/cleo/no-such-case", None, None, "ingest:cleo"),
    "measure": (
        "POST",
        "/fhir/QuestionnaireResponse",
        (ROOT / "fixtures/measures/phq-9-lhc-forms.qr.json").read_bytes(),
        None,
        "measures:write",
    ),
    "pathway referral": (
        "POST",
        "/fhir/ServiceRequest/$route",
        (ROOT / "fixtures/pathways/tt-gp-referral-step-3.servicerequest.json").read_bytes(),
        None,
        "ingest:referral",
    ),
    "episode operation": ("POST", "/fhir/EpisodeOfCare/no-such-episode/$allocate", params(practitioner="T"), None, "pathway:operate"),
    "episode explain": ("GET", "/fhir/EpisodeOfCare/no-such-episode/$explain", None, None, "pathway:operate fhir:read"),
    "episode search": ("GET", "/fhir/EpisodeOfCare", None, None, "fhir:read"),
    "waitlist report": ("GET", "/reports/waitlist", None, None, "reports:read"),
    "queue": ("GET", "/queue", None, None, "cas:operate"),
    "queue summary": ("GET", "/queue/summary?service=bnssg", None, None, "cas:operate"),
    "case operation": (
        "POST",
        "/fhir/Task/no-such-case/$cn-review",
        params(practitioner="CN", suitability="registered"),
        None,
        "cas:operate",
    ),
    "fhir search": ("GET", "/fhir/Task", None, None, "fhir:read"),
    "fhir read": ("GET", "/fhir/Patient/no-such-patient", None, None, "fhir:read"),
    "outcome summary": ("GET", "/fhir/Patient/no-such-patient/$outcome-summary", None, None, "fhir:read"),
    "audit search": ("GET", "/fhir/AuditEvent", None, None, "audit:read"),
    "metrics": ("GET", "/metrics", None, None, "metrics:read"),
    "outbox list": ("GET", "/outbox?status=dead", None, None, "outbox:read"),
    "outbox delivery": ("GET", "/outbox/no-such-delivery", None, None, "outbox:read"),
    "outbox replay": ("POST", "/outbox/no-such-delivery/$replay", None, None, "outbox:operate"),
    "letter request": (
        "POST",
        "/fhir/CommunicationRequest",
        json.dumps(letter_request("security-test", "tt-progress", "no-such-patient", [])).encode(),
        None,
        "letters:write",
    ),
}


def _send(client: TestClient, family: str) -> Any:
    method, path, body, headers, _ = FAMILIES[family]
    sent_headers = bars_headers() if headers == "bars" else {}
    return client.request(method, path, content=body, headers=sent_headers)


def _refusal(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    ((severity, element, diagnostics),) = issues(response.json())
    assert severity == "error" and element == "header:Authorization"
    code = response.json()["issue"][0]["details"]["coding"][0]["code"]
    assert code == {401: "REC_UNAUTHORIZED", 403: "REC_FORBIDDEN"}[status]
    return diagnostics


def _audit(client: TestClient, **search: str) -> list[dict[str, Any]]:
    bundle = client.get("/fhir/AuditEvent", params={"_count": "200", **search}).json()
    return [e["resource"] for e in bundle.get("entry", [])]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_endpoint_family_refuses_no_credential_with_401_and_audits_it(anonymous, client, family: str, stored) -> None:
    before = stored()
    response = _send(anonymous, family)
    assert "no credential" in _refusal(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert stored() == before  # nothing stored
    method, path, *_ = FAMILIES[family]
    (event,) = [e for e in _audit(client, outcome="4") if e["entity"][-1]["description"] == f"{method} {path.split('?')[0]}"]
    assert event["agent"][0]["who"] == {"display": "unauthenticated client"} and event["outcomeDesc"].startswith("HTTP 401")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_endpoint_family_refuses_a_client_without_its_scope_with_403_and_audits_it(client_with, client, family: str) -> None:
    needed = FAMILIES[family][4].split()
    other = client_with({s for s in SCOPES if s not in (*needed, ADMIN)})  # every scope but those that allow it
    response = _send(other, family)
    assert " or ".join(needed) in _refusal(response, 403)
    events = [e for e in _audit(client, outcome="4") if e["outcomeDesc"].startswith("HTTP 403")]
    assert len(events) == 1 and events[0]["agent"][0]["who"]["identifier"]["system"] == "https://fhir.iap-gateway.org/Id/client"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_endpoint_family_serves_a_client_holding_just_its_scope(client_with, family: str) -> None:
    for scope in FAMILIES[family][4].split():  # any one of them is enough
        response = _send(client_with({scope}), family)
        assert response.status_code not in (401, 403), response.text


def test_a_111_system_submits_referrals_but_cannot_read_cases(client_with) -> None:
    nhs111 = client_with({"ingest:nhs111"})
    reply = nhs111.post("/ingest/nhs111", content=fixture_bytes("option2-red-flag.case.json"))
    assert reply.status_code == 201
    task = task_of(reply.json())
    assert nhs111.post("/ingest/nhs111", content=fixture_bytes("option2-red-flag.case.json")).json() == reply.json()  # its re-send
    for path in (f"/fhir/Task/{task['id']}", "/fhir/Task", "/queue", f"/fhir/Task/{task['id']}/$explain", f"/export/cleo/{task['id']}"):
        assert nhs111.get(path).status_code == 403, path


def test_an_operator_works_the_queue_but_cannot_submit_referrals(client, client_with) -> None:
    task = task_of(client.post("/ingest/nhs111", content=fixture_bytes("option2-standard.case.json")).json())
    operator = client_with({"cas:operate", "fhir:read"})
    assert operator.get("/queue").json()["count"] == 1
    assert (
        operator.post(f"/fhir/Task/{task['id']}/$cn-review", content=params(practitioner="CN", suitability="registered")).status_code == 200
    )
    assert operator.post("/ingest/nhs111", content=fixture_bytes("option2-red-flag.case.json")).status_code == 403
    assert operator.get("/fhir/AuditEvent").status_code == 403  # the audit trail is for auditors


def test_an_epr_bound_to_its_service_syncs_only_its_own_cases(client, client_with, stored) -> None:
    """CLEO for bnssg: exports and updates bnssg cases; a bsw case is not found (404: no hint that it exists), and an
    update of it is refused (403) and leaves it unchanged."""
    ours = task_of(client.post("/ingest/nhs111", content=fixture_bytes("option2-standard.case.json")).json())  # bnssg
    theirs = task_of(client.post("/ingest/nhs111", content=fixture_bytes("third-party-bsw.case.json")).json())  # bsw
    cleo = client_with({"ingest:cleo"}, service="bnssg")
    assert cleo.get(f"/export/cleo/{ours['id']}").status_code == 200
    refused = cleo.get(f"/export/cleo/{theirs['id']}")
    assert refused.status_code == 404 and "bnssg" not in refused.text
    before = stored()
    assert cleo.post("/ingest/cleo", content=update(theirs["id"])).status_code == 403
    assert stored() == before and client.get(f"/fhir/Task/{theirs['id']}").json()["status"] == "ready"
    assert cleo.post("/ingest/cleo", content=update(ours["id"], update_id="CLEO-U-OURS")).status_code == 200


def test_an_operator_bound_to_a_service_sees_only_its_queue(client, client_with) -> None:
    client.post("/ingest/nhs111", content=fixture_bytes("option2-standard.case.json"))
    client.post("/ingest/nhs111", content=fixture_bytes("third-party-bsw.case.json"))
    bsw = client_with({"cas:operate"}, service="bsw")
    entries = bsw.get("/queue").json()["entries"]
    assert [e["service"] for e in entries] == ["bsw"]
    assert bsw.get("/queue", params={"service": "bnssg"}).status_code == 403
    assert bsw.get("/queue/summary", params={"service": "bnssg"}).status_code == 403
    bnssg_case = next(e for e in client.get("/queue").json()["entries"] if e["service"] == "bnssg")["task"].split("/")[1]
    assert bsw.post(f"/fhir/Task/{bnssg_case}/$cn-review", content=params(practitioner="CN", suitability="registered")).status_code == 403


def test_rio_notes_from_a_bound_client_relate_only_to_its_services_cases(client, client_with) -> None:
    """A RiO client bound to bsw: its note for a patient with a bnssg Specialist Desk case is kept, but not related to that case."""
    desk = task_of(client.post("/ingest/nhs111", content=fixture_bytes("specialist-desk-ooh.case.json")).json())
    rio = client_with({"ingest:hl7v2"}, service="bsw")
    nhs = client.get(desk["for"]["reference"].replace("Patient/", "/fhir/Patient/")).json()["identifier"][0]["value"]
    note = (RIO / "oru-r01-progress-note.hl7").read_bytes()
    assert nhs.encode() in note, "the fixture note is for the desk case's patient"
    assert rio.post("/ingest/hl7v2", content=note).headers["x-hl7-ack-code"] == "AA"
    documents = client.get("/fhir/DocumentReference/" + _only_document(client)).json()
    assert "related" not in documents.get("context", {})


def _only_document(client: TestClient) -> str:
    from sqlalchemy import select

    from gateway.platform.store.models import ResourceRow

    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        return session.execute(select(ResourceRow.id).where(ResourceRow.resource_type == "DocumentReference")).scalars().one()


def test_default_deny_a_route_not_in_the_scope_table_needs_admin(app, anonymous, client_with) -> None:
    assert rule_for("GET", "/no/such/route") is DEFAULT_RULE
    assert anonymous.get("/no/such/route").status_code == 401  # nothing is learnt without a credential
    assert client_with({s for s in SCOPES if s != ADMIN}).get("/no/such/route").status_code == 403
    assert client_with({ADMIN}).get("/no/such/route").status_code == 404


def test_every_route_the_app_serves_has_its_own_row_in_the_scope_table(app) -> None:
    """A new route must be given its scope deliberately (else it falls to the admin-only default)."""
    described = app.openapi()["paths"]
    assert len(described) >= 25
    for path, operations in described.items():
        sample = path.replace("{resource_type}", "Task").replace("{", "x").replace("}", "")
        for method in operations:
            assert rule_for(method.upper(), sample) is not DEFAULT_RULE, (method, path)
    for method, path in (("PUT", "/fhir/Task/x"), ("DELETE", "/fhir/Task/x"), ("GET", "/fhir/$process-message")):  # the 405 answers
        assert rule_for(method, path) is not DEFAULT_RULE
    assert all(scope in SCOPES or scope == "public" for rule in ROUTES for scope in rule.scopes)


def test_public_routes_are_only_probes_the_api_description_and_the_token_endpoint(anonymous) -> None:
    for path in ("/healthz", "/readyz", "/openapi.json", "/docs", "/fhir/metadata"):
        assert anonymous.get(path).status_code == 200, path
    description = anonymous.get("/openapi.json").json()
    assert description["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer" and description["security"] == [{"bearer": []}]


# -- API keys ------------------------------------------------------------------------------------


def test_a_wrong_malformed_or_non_bearer_credential_is_401(app, anonymous, all_scopes_key) -> None:
    for header in (
        all_scopes_key[:-2] + "xx",  # wrong secret
        "iapk_short_x",
        "iapt_" + "x" * 43,  # not an issued token
        "not-a-key",
    ):
        assert "credential not valid" in _refusal(anonymous.get("/fhir/Task", headers=bearer(header)), 401)
    basic = anonymous.get("/fhir/Task", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert basic.status_code == 401 and 'error="invalid_token"' in basic.headers["www-authenticate"]


def test_rotating_a_key_stops_the_old_one_and_revoking_stops_the_client(app, anonymous) -> None:
    with app.state.sessions.begin() as session:
        _, old = add_client(session, "rotated", frozenset({"fhir:read"}), NOW)
    assert old and anonymous.get("/fhir/Task", headers=bearer(old)).status_code == 200
    with app.state.sessions.begin() as session:
        new = rotate_api_key(session, "rotated")
    assert anonymous.get("/fhir/Task", headers=bearer(old)).status_code == 401
    assert anonymous.get("/fhir/Task", headers=bearer(new)).status_code == 200
    with app.state.sessions.begin() as session:
        revoke_client(session, "rotated", NOW)
    assert anonymous.get("/fhir/Task", headers=bearer(new)).status_code == 401


def test_keys_are_stored_hashed_never_in_clear(app) -> None:
    from sqlalchemy import select

    from gateway.platform.store.models import ApiClient

    with app.state.sessions.begin() as session:
        _, key = add_client(session, "hashed", frozenset({"fhir:read"}), NOW)
    with app.state.sessions() as session:
        row = session.execute(select(ApiClient).where(ApiClient.name == "hashed")).scalar_one()
    assert key and key.split("_", 2)[2] not in (row.key_hash or "") and (row.key_hash or "").startswith("scrypt$")


def test_a_client_needs_known_scopes_and_a_unique_name(app) -> None:
    with app.state.sessions.begin() as session, pytest.raises(ClientError, match="unknown scope"):
        add_client(session, "x", frozenset({"ingest:everything"}), NOW)
    with app.state.sessions.begin() as session:
        add_client(session, "same", frozenset({"fhir:read"}), NOW)
    with app.state.sessions.begin() as session, pytest.raises(ClientError, match="exists already"):
        add_client(session, "same", frozenset({"fhir:read"}), NOW)


# -- signed JWT client assertions ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=4096)


def _jwks(key: rsa.RSAPrivateKey, kid: str = "test-1") -> str:
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key())) | {"kid": kid, "alg": "RS512", "use": "sig"}
    return json.dumps({"keys": [jwk]})


def _assertion(key: rsa.RSAPrivateKey, client_id: str, **overrides: Any) -> str:
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": TOKEN_URL,
        "jti": str(uuid.uuid4()),
        "exp": int((NOW + timedelta(minutes=4)).timestamp()),
    }
    headers = {"kid": overrides.pop("kid", "test-1")}
    algorithm = overrides.pop("alg", "RS512")
    claims |= overrides
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, key, algorithm=algorithm, headers=headers)


def _token_request(client: TestClient, assertion: str, **fields: str) -> Any:
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
    } | fields
    return client.post("/oauth2/token", data=form)


@pytest.fixture
def jwt_client(app: Any, signing_key: rsa.RSAPrivateKey) -> str:
    with app.state.sessions.begin() as session:
        principal, key = add_client(session, "jwt-111", frozenset({"ingest:nhs111"}), NOW, jwks=_jwks(signing_key), api_key=False)
    assert key is None
    return principal.client_id


def test_a_signed_jwt_assertion_gets_an_access_token_that_carries_the_clients_scopes(anonymous, client, jwt_client, signing_key) -> None:
    response = _token_request(anonymous, _assertion(signing_key, jwt_client))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 600 and body["access_token"].startswith("iapt_")
    assert response.headers["cache-control"] == "no-store"
    token = bearer(body["access_token"])
    assert anonymous.post("/ingest/nhs111", content=fixture_bytes("option2-standard.case.json"), headers=token).status_code == 201
    assert anonymous.get("/fhir/Task", headers=token).status_code == 403
    logins = _audit(client, subtype="110122")
    assert [(e["outcome"], e["agent"][0]["who"]["identifier"]["value"]) for e in logins] == [("0", jwt_client)]


def test_an_access_token_expires_and_dies_with_its_client(app, anonymous, jwt_client, signing_key, clock) -> None:
    token = bearer(_token_request(anonymous, _assertion(signing_key, jwt_client)).json()["access_token"])
    assert anonymous.post("/ingest/nhs111", content=fixture_bytes("option2-standard.case.json"), headers=token).status_code == 201
    clock.set(NOW + timedelta(seconds=601))
    assert anonymous.get("/queue", headers=token).status_code == 401
    clock.set(NOW)
    fresh = bearer(_token_request(anonymous, _assertion(signing_key, jwt_client)).json()["access_token"])
    with app.state.sessions.begin() as session:
        revoke_client(session, "jwt-111", NOW)
    assert anonymous.post("/ingest/nhs111", content=fixture_bytes("option2-red-flag.case.json"), headers=fresh).status_code == 401
    assert _token_request(anonymous, _assertion(signing_key, jwt_client)).json()["error"] == "invalid_client"


@pytest.mark.parametrize(
    ("change", "error", "says"),
    [
        ({"aud": "https://elsewhere.example/oauth2/token"}, "invalid_request", "'aud'"),
        ({"exp": int((NOW + timedelta(minutes=6)).timestamp())}, "invalid_request", "no more than 5 minutes"),
        ({"exp": int((NOW - timedelta(seconds=1)).timestamp())}, "invalid_request", "expired"),
        ({"sub": "someone-else"}, "invalid_request", "'iss' and 'sub'"),
        ({"jti": None}, "invalid_request", "'jti'"),
        ({"kid": "unknown-kid"}, "invalid_request", "no public key with kid"),
        ({"alg": "RS256"}, "invalid_request", "RS512"),
        ({"iss": "no-such-client", "sub": "no-such-client"}, "invalid_client", "unknown or revoked client"),
        ({"iss": "jwt\x00111", "sub": "jwt\x00111"}, "invalid_client", "unknown or revoked client"),  # PostgreSQL: was a 500
        ({"jti": "jti\x00"}, "invalid_request", "'jti'"),
    ],
)
def test_a_client_assertion_breaking_the_rules_is_refused_and_audited(
    anonymous, client, jwt_client, signing_key, change: dict[str, Any], error: str, says: str
) -> None:
    response = _token_request(anonymous, _assertion(signing_key, jwt_client, **change))
    assert response.status_code == (401 if error == "invalid_client" else 400)
    assert response.json()["error"] == error and says in response.json()["error_description"]
    (event,) = _audit(client, subtype="110122")
    assert event["outcome"] == "4" and error in event["outcomeDesc"]


def test_an_assertion_signed_by_another_key_is_refused(anonymous, jwt_client) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    response = _token_request(anonymous, _assertion(stranger, jwt_client))
    assert response.status_code == 400 and "signature" in response.json()["error_description"]


def test_an_assertion_is_usable_once(anonymous, jwt_client, signing_key) -> None:
    assertion = _assertion(signing_key, jwt_client)
    assert _token_request(anonymous, assertion).status_code == 200
    replay = _token_request(anonymous, assertion)
    assert replay.status_code == 400 and "already been used" in replay.json()["error_description"]


def test_the_token_endpoint_takes_only_the_client_credentials_grant_with_a_jwt_assertion(anonymous, jwt_client, signing_key) -> None:
    assertion = _assertion(signing_key, jwt_client)
    assert _token_request(anonymous, assertion, grant_type="password").json()["error"] == "unsupported_grant_type"
    assert _token_request(anonymous, assertion, client_assertion_type="x").json()["error"] == "invalid_request"
    assert anonymous.post("/oauth2/token", content=b"").json()["error"] == "unsupported_grant_type"


def test_a_registered_key_must_be_a_public_rsa_key_of_4096_bits(app, signing_key) -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with app.state.sessions.begin() as session, pytest.raises(ValueError, match="4096"):
        add_client(session, "small", frozenset({"fhir:read"}), NOW, jwks=_jwks(small))
    private = json.loads(RSAAlgorithm.to_jwk(signing_key)) | {"kid": "k"}
    with app.state.sessions.begin() as session, pytest.raises(ValueError, match="private key"):
        add_client(session, "private", frozenset({"fhir:read"}), NOW, jwks=json.dumps({"keys": [private]}))


# -- the CLI ---------------------------------------------------------------------------------------


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, cwd=ROOT, env={**os.environ, **env}, timeout=120
    )


def test_clients_add_prints_the_key_once_and_the_gateway_accepts_it(tmp_path: Path, clock) -> None:  # type: ignore[no-untyped-def]
    from gateway.api.app import create_app
    from gateway.platform.settings import Settings

    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}"}
    added = _cli("clients", "add", "nhs111-provider-x", "--scopes", "ingest:nhs111", env=env)
    assert added.returncode == 0, added.stderr
    key = added.stdout.strip()
    assert key.startswith("iapk_") and "shown once" in added.stderr and key not in added.stderr
    listed = _cli("clients", "list", env=env)
    assert "nhs111-provider-x" in listed.stdout and "ingest:nhs111" in listed.stdout and key.split("_", 2)[2] not in listed.stdout
    refused = _cli("clients", "add", "other", "--scopes", "ingest:everything", env=env)
    assert refused.returncode == 2 and "unknown scope" in refused.stderr
    unbound = _cli("clients", "add", "cleo", "--scopes", "ingest:cleo", "--service", "nowhere", env=env)
    assert unbound.returncode == 2 and "unknown service" in unbound.stderr
    app = create_app(Settings(DATABASE_URL=env["DATABASE_URL"], environment="test", tick_seconds=0, mllp_port=0), clock)
    try:
        with TestClient(app, raise_server_exceptions=False) as http:
            assert http.post("/ingest/nhs111", content=fixture_bytes("option2-standard.case.json"), headers=bearer(key)).status_code == 201
            assert http.get("/fhir/Task", headers=bearer(key)).status_code == 403
            assert _cli("clients", "revoke", "nhs111-provider-x", env=env).returncode == 0
            assert http.get("/queue", headers=bearer(key)).status_code == 401
    finally:
        app.state.engine.dispose()


def test_a_pathway_team_bound_to_its_service_refers_to_and_works_only_its_own_episodes(client, client_with) -> None:
    from tests.test_pathway_api import tt_episode

    theirs = tt_episode(client)  # north-essex-mid
    team = client_with({"ingest:referral", "pathway:operate", "reports:read"}, service="north-essex-north-east")
    referral = (ROOT / "fixtures/pathways/tt-gp-referral-step-3.servicerequest.json").read_bytes()
    ours = team.post("/fhir/ServiceRequest/$route", content=referral)
    assert ours.status_code == 201  # to its own service
    refused = team.post(f"/fhir/EpisodeOfCare/{theirs}/$allocate", content=params(practitioner="T", therapist="T"))
    assert refused.status_code == 403 and "north-essex-north-east" in issues(refused.json())[0][2]
    assert team.get(f"/fhir/EpisodeOfCare/{theirs}/$explain").status_code == 404
    assert team.get("/reports/waitlist", params={"service": "north-essex-mid"}).status_code == 403
    assert team.get("/reports/waitlist").status_code == 200
