"""Credential guessing over HTTP (issue 31, item 3): failed API key checks cost the same whether the key id exists or
not, are limited per address and per key id (429 with Retry-After), audited and counted; a real client keeps working.

How /healthz fares under 40 parallel guessers is a benchmark (bench/guessing.py, bench/README.md), not a test."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

import gateway.platform.security.clients
from gateway.platform.security.guessing import FailedChecks
from tests.conftest import add_test_client, bearer, metric_value

LIMIT = 3


@pytest.fixture
def guarded(app: Any, clock: Any) -> Any:
    """The app with a limit of 3 failed checks per 60 s (IAP_AUTH_FAILURE_LIMIT, IAP_AUTH_FAILURE_WINDOW_SECONDS)."""
    app.state.authenticator.failures = FailedChecks(clock, LIMIT, 60, refusal_delay=0)  # the delay: bench/guessing.py
    return app


def _guess(key: str, n: int) -> str:
    """The key with its secret replaced: a wrong guess for the same key id."""
    prefix, key_id, _ = key.split("_", 2)
    return f"{prefix}_{key_id}_guess{n:04d}{'x' * 30}"


def _throttled(response: Any) -> int:
    assert response.status_code == 429, response.text
    (issue,) = response.json()["issue"]
    assert issue["code"] == "throttled" and issue["expression"] == ["header:Authorization"]
    return int(response.headers["retry-after"])


def test_wrong_secrets_for_a_key_id_are_answered_429_with_retry_after_and_its_real_client_keeps_working(guarded, client, clock) -> None:  # type: ignore[no-untyped-def]
    key = add_test_client(guarded, {"fhir:read"})
    with TestClient(guarded, client=("192.0.2.10", 5000)) as real, TestClient(guarded, client=("192.0.2.66", 5000)) as guesser:
        assert real.get("/fhir/metadata", headers=bearer(key)).status_code == 200  # the real client, before the guessing
        for n in range(LIMIT):
            assert guesser.get("/queue", headers=bearer(_guess(key, n))).status_code == 401
        assert _throttled(guesser.get("/queue", headers=bearer(_guess(key, 99)))) == 60
        # the key id is blocked from every address, but a key proven good before is not checked again: still served
        assert _throttled(TestClient(guarded, client=("192.0.2.77", 1)).get("/queue", headers=bearer(_guess(key, 7)))) == 60
        assert real.get("/fhir/metadata", headers=bearer(key)).status_code == 200
        clock.set(clock.now() + timedelta(seconds=45))
        assert _throttled(guesser.get("/queue", headers=bearer(_guess(key, 98)))) == 15
        clock.set(clock.now() + timedelta(seconds=16))  # the window is over: checked (and refused) again
        assert guesser.get("/queue", headers=bearer(_guess(key, 97))).status_code == 401
    events = [e for e in _audit(client) if e["outcomeDesc"].startswith("HTTP 429")]
    # once per window for each blocked address and key id (a write for every refused guess would hand guessers the store)
    assert sorted(e["outcomeDesc"].split(" (")[0] for e in events) == [
        "HTTP 429: too many failed credential checks for this API key id",  # from 192.0.2.77: its key id is blocked
        "HTTP 429: too many failed credential checks for this address",
    ]
    assert all(e["agent"][0]["who"] == {"display": "unauthenticated client"} for e in events)


def test_guesses_at_unknown_key_ids_from_one_address_are_limited_and_other_addresses_are_not(guarded) -> None:  # type: ignore[no-untyped-def]
    with TestClient(guarded, client=("192.0.2.66", 5000)) as guesser, TestClient(guarded, client=("192.0.2.67", 5000)) as other:
        for n in range(LIMIT):
            assert guesser.get("/queue", headers=bearer(f"iapk_{n:016x}_{'s' * 40}")).status_code == 401
        assert _throttled(guesser.get("/queue", headers=bearer(f"iapk_{99:016x}_{'s' * 40}"))) == 60
        assert other.get("/queue", headers=bearer(f"iapk_{98:016x}_{'s' * 40}")).status_code == 401


def test_a_guess_costs_one_scrypt_whether_or_not_its_key_id_exists_and_a_repeat_costs_none(guarded, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Uniform work: the same slow check (scrypt with the same cost parameters) for an unknown key id, a revoked or
    unknown client and a wrong secret for a known one; a failed credential sent again within the window is not checked."""
    checked: list[str] = []
    verify = gateway.platform.security.clients.verify_secret

    def counting(secret: str, stored: str) -> bool:
        checked.append(stored.rsplit("$", 2)[0])  # scheme, n, r, p: the cost
        return verify(secret, stored)

    monkeypatch.setattr(gateway.platform.security.clients, "verify_secret", counting)
    key = add_test_client(guarded, {"fhir:read"})
    with TestClient(guarded) as anyone:
        assert anyone.get("/queue", headers=bearer(_guess(key, 1))).status_code == 401  # known key id, wrong secret
        assert anyone.get("/queue", headers=bearer(f"iapk_{'0' * 16}_{'s' * 40}")).status_code == 401  # unknown key id
        assert len(checked) == 2 and checked[0] == checked[1] == "scrypt$16384$8$1"
        assert anyone.get("/queue", headers=bearer(_guess(key, 1))).status_code == 401  # the same guess again
        assert len(checked) == 2


def test_failed_checks_and_rate_limited_requests_are_counted_for_alerting(guarded, client) -> None:  # type: ignore[no-untyped-def]
    def counts() -> tuple[float, float]:
        text = client.get("/metrics").text
        name = "iap_credential_failures_total"
        return metric_value(text, name, outcome="not-valid"), metric_value(text, name, outcome="rate-limited")

    before = counts()
    with TestClient(guarded, client=("192.0.2.66", 5000)) as guesser:
        for n in range(LIMIT + 2):
            guesser.get("/queue", headers=bearer(f"iapk_{n:016x}_{'s' * 40}"))
    after = counts()
    assert (after[0] - before[0], after[1] - before[1]) == (LIMIT, 2)


def _audit(client: TestClient) -> list[dict[str, Any]]:
    bundle = client.get("/fhir/AuditEvent", params={"_count": "200", "outcome": "4"}).json()
    return [e["resource"] for e in bundle.get("entry", [])]
