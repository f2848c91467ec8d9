"""Client systems in the store: create, list, revoke, rotate; authenticate a bearer credential; exchange an assertion.

A client is one calling system with its own credentials and scopes (see gateway/platform/security/scopes.py).
Credentials are shown once, when made, and kept only hashed. Authentication costs one primary-key
read per request (so a revoked client is refused at once, on every instance).
"""

from __future__ import annotations

import re
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import bindparam, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from gateway.platform.clock import Clock
from gateway.platform.security.credentials import (
    API_KEY_PREFIX,
    TOKEN_PREFIX,
    AssertionRefused,
    check_jwks,
    hash_secret,
    new_access_token,
    new_api_key,
    split_api_key,
    token_digest,
    unverified_client_id,
    verify_client_assertion,
    verify_secret,
)
from gateway.platform.security.guessing import FailedChecks, TooManyFailures
from gateway.platform.security.principal import Principal
from gateway.platform.security.scopes import SCOPES
from gateway.platform.store.db import one_read
from gateway.platform.store.models import AccessToken, ApiClient, UsedAssertion

__all__ = [
    "Principal",
    "ClientError",
    "add_client",
    "list_clients",
    "revoke_client",
    "rotate_api_key",
    "Authenticator",
    "IssuedToken",
    "TooManyFailures",
    "parse_scopes",
]

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_in: int
    principal: Principal


class ClientError(ValueError):
    """A client cannot be created or changed as asked (the message says why)."""


def parse_scopes(text: str) -> frozenset[str]:
    scopes = frozenset(text.replace(",", " ").split())
    unknown = sorted(scopes - set(SCOPES))
    if unknown:
        raise ClientError(f"unknown scope(s) {unknown}; known: {sorted(SCOPES)}")
    if not scopes:
        raise ClientError("a client needs at least one scope")
    return scopes


# the columns a request's authentication needs, by API key id or access token (plain statements, built once: they run per request)
_CLIENT_BY_KEY_ID = select(
    ApiClient.id, ApiClient.name, ApiClient.scopes, ApiClient.service_id, ApiClient.active, ApiClient.key_hash
).where(ApiClient.key_id == bindparam("key_id"))

_CLIENT_BY_TOKEN = (
    select(ApiClient.id, ApiClient.name, ApiClient.scopes, ApiClient.service_id, ApiClient.active, AccessToken.expires_at)
    .join(AccessToken, AccessToken.client_id == ApiClient.id)
    .where(AccessToken.token_hash == bindparam("digest"))
)


def _principal(client: Any) -> Principal:
    """The Principal of a client (an ApiClient, or a row with its id, name, scopes and service_id)."""
    return Principal(client.id, client.name, frozenset(client.scopes.split()), client.service_id)


def add_client(
    session: Session,
    name: str,
    scopes: frozenset[str],
    now: datetime,
    *,
    service_id: str | None = None,
    jwks: str | None = None,
    api_key: bool = True,
) -> tuple[Principal, str | None]:
    """Create a client; returns it and its API key (shown once; None when `api_key` is False)."""
    if not _NAME.match(name):
        raise ClientError("a client name is 1-64 characters: lower-case letters, digits, '.', '_' or '-'")
    if not api_key and jwks is None:
        raise ClientError("a client needs an API key, a JWKS for signed JWT assertions, or both")
    unknown = sorted(scopes - set(SCOPES))
    if unknown or not scopes:
        raise ClientError(f"unknown scope(s) {unknown}; known: {sorted(SCOPES)}" if unknown else "a client needs at least one scope")
    if session.execute(select(ApiClient.id).where(ApiClient.name == name)).first() is not None:
        raise ClientError(f"a client named {name!r} exists already (revoke it, or rotate its key)")
    key, key_id, key_hash = new_api_key() if api_key else (None, None, None)
    client = ApiClient(
        id=str(uuid.uuid4()),
        name=name,
        scopes=" ".join(sorted(scopes)),
        service_id=service_id,
        key_id=key_id,
        key_hash=key_hash,
        jwks=check_jwks(jwks) if jwks is not None else None,
        active=True,
        created_at=now,
    )
    session.add(client)
    session.flush()
    return _principal(client), key


def list_clients(session: Session) -> list[ApiClient]:
    return list(session.execute(select(ApiClient).order_by(ApiClient.name)).scalars())


def _by_name(session: Session, name: str) -> ApiClient:
    client = session.execute(select(ApiClient).where(ApiClient.name == name).with_for_update()).scalar_one_or_none()
    if client is None:
        raise ClientError(f"no client named {name!r}")
    return client


def revoke_client(session: Session, name: str, now: datetime) -> None:
    """Refuse the client from now on, on every instance: its key, its assertions and its issued tokens."""
    client = _by_name(session, name)
    client.active = False
    client.revoked_at = now
    session.execute(delete(AccessToken).where(AccessToken.client_id == client.id))


def rotate_api_key(session: Session, name: str) -> str:
    """A new API key for an active client (the old one stops working at once); returned once."""
    client = _by_name(session, name)
    if not client.active:
        raise ClientError(f"client {name!r} is revoked")
    key, client.key_id, client.key_hash = new_api_key()
    return key


# sha256(API key) -> the stored scrypt hash it was verified against: a memo of a pure check, shared by the process,
# so scrypt runs once per key (a rotated key has a new hash and is checked afresh; a revoked client fails before this)
_VERIFIED: dict[str, str] = {}
_VERIFIED_MAX = 4096
# scrypt takes ~16 MiB while it runs: at most two at once per process, whoever asks, and always on the same two threads
# (run on any of the request threads, each thread's malloc arena kept its own 16 MiB: 700 MiB under 40 guessers)
_SLOW_CHECKS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="iap-scrypt")
# sha256(API key) -> its check under way: requests with the same credential wait for that one check
_IN_FLIGHT: dict[str, Future[bool]] = {}
_IN_FLIGHT_LOCK = threading.Lock()


@cache
def _nobodys_hash() -> str:
    """A hash no key has: an unknown or revoked key id's secret is checked against it, so that a guess costs the same
    scrypt whether or not its key id exists (the time taken does not tell)."""
    return hash_secret("not any client's secret")


class Authenticator:
    """Bearer credentials -> Principal (or None). Verified API keys are remembered by digest, so scrypt runs once."""

    def __init__(self, sessions: sessionmaker[Session], clock: Clock, token_ttl: timedelta, failures: FailedChecks | None = None) -> None:
        self.sessions = sessions
        self.clock = clock
        self.token_ttl = token_ttl
        self.failures = failures or FailedChecks(clock, limit=10, window_seconds=60)

    def precheck(self, credential: str, address: str | None) -> None:
        """Cheap enough for the event loop (a SHA-256): TooManyFailures for an API key that would need a slow check from
        a blocked address or for a blocked key id, before the request takes a worker thread."""
        parts = split_api_key(credential) if credential.startswith(API_KEY_PREFIX + "_") else None
        if parts is not None and token_digest(credential) not in _VERIFIED:
            self.failures.check(address, parts[0])

    def authenticate(self, credential: str, address: str | None = None) -> Principal | None:
        """The client a bearer credential is, or None; TooManyFailures (answer 429) for an API key needing a slow check
        from an address, or for a key id, that has failed too often lately (gateway.platform.security.guessing)."""
        if credential.startswith(API_KEY_PREFIX + "_"):
            return self._api_key(credential, address)
        if credential.startswith(TOKEN_PREFIX + "_"):
            return self._access_token(credential)
        return None

    def _api_key(self, key: str, address: str | None) -> Principal | None:
        parts = split_api_key(key)
        if parts is None:
            return None
        digest = token_digest(key)
        known = digest in _VERIFIED
        if not known:  # before any read: a blocked guesser costs a hash and nothing more
            self.failures.check(address, parts[0])
            if self.failures.failed_before(digest):
                return None
        with one_read(self.sessions) as connection:  # read on every request, so a revocation holds at once on every instance
            client = connection.execute(_CLIENT_BY_KEY_ID, {"key_id": parts[0]}).first()
        stored: str | None = client.key_hash if client is not None and client.active else None
        if stored is not None and _VERIFIED.get(digest) == stored:
            return _principal(client)  # proven good in this process: no slow check, even from a blocked address
        # one check per credential at a time: a client's first burst of requests shares one scrypt (and counts as one
        # check under way), where each request checking on its own would count as many and hit the limit
        with _IN_FLIGHT_LOCK:
            pending = _IN_FLIGHT.get(digest)
            leader = pending is None
            if pending is None:
                self.failures.begin(address, parts[0])  # counted as failed until it passes
                # the same scrypt for a known key id and for an unknown one
                pending = _IN_FLIGHT[digest] = _SLOW_CHECKS.submit(verify_secret, parts[1], stored or _nobodys_hash())
        try:
            good = pending.result()
        finally:
            if leader:
                with _IN_FLIGHT_LOCK:
                    _IN_FLIGHT.pop(digest, None)
        if stored is None or not good:
            if leader:
                self.failures.failed(digest)
            return None
        if leader:
            self.failures.succeeded(address, parts[0])
        if len(_VERIFIED) >= _VERIFIED_MAX:
            _VERIFIED.clear()
        _VERIFIED[digest] = stored
        return _principal(client)

    def _access_token(self, token: str) -> Principal | None:
        with one_read(self.sessions) as connection:
            row = connection.execute(_CLIENT_BY_TOKEN, {"digest": token_digest(token)}).first()
        if row is None or not row.active or row.expires_at <= self.clock.now():
            return None
        return _principal(row)

    def exchange_assertion(self, assertion: str, audience: str) -> IssuedToken:
        """A signed JWT client assertion -> an access token; AssertionRefused (OAuth error code) otherwise."""
        now = self.clock.now()
        client_id = unverified_client_id(assertion)
        with self.sessions() as session:
            client = session.get(ApiClient, client_id) if len(client_id) <= 64 and "\x00" not in client_id else None
        if client is None or not client.active:
            raise AssertionRefused("invalid_client", "unknown or revoked client in 'iss'/'sub' claims")
        if not client.jwks:
            raise AssertionRefused("invalid_client", "this client has no public keys registered for signed JWT assertions")
        checked = verify_client_assertion(assertion, client.jwks, audience, now)
        token, digest = new_access_token()
        try:
            with self.sessions.begin() as session:
                session.execute(delete(UsedAssertion).where(UsedAssertion.expires_at < now))  # forget what can no longer be replayed
                session.add(UsedAssertion(client_id=client.id, jti=checked.jti, expires_at=checked.expires_at))
                session.add(AccessToken(token_hash=digest, client_id=client.id, issued_at=now, expires_at=now + self.token_ttl))
                session.execute(delete(AccessToken).where(AccessToken.expires_at < now))
        except IntegrityError:
            raise AssertionRefused("invalid_request", "'jti' claim has already been used") from None
        return IssuedToken(token, int(self.token_ttl.total_seconds()), _principal(client))
