"""Credentials: API keys (scrypt-hashed at rest), access tokens (SHA-256 at rest), signed JWT client assertions.

An API key is `iapk_<key id>_<secret>`: the key id finds the client, the secret is checked against
its scrypt hash. An access token is `iapt_<random>`, issued by the token endpoint for a verified
client assertion (NHS England's "signed JWT" pattern, OAuth 2.0 private_key_jwt: RS512, `kid` in
the header, `iss` = `sub` = the client id, `aud` = the token endpoint's URL, `exp` at most five
minutes ahead, `jti` used once). Both are random 256-bit values, so a SHA-256 of a token is as safe
at rest as a slow hash; the API key's secret gets scrypt all the same, and a verified key is
remembered (by its digest) so the slow hash is paid once per process, not per request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt
from jwt.algorithms import RSAAlgorithm

from adapters.jsonparse import parse_json_object
from adapters.problems import GatewayInputError

__all__ = [
    "API_KEY_PREFIX",
    "TOKEN_PREFIX",
    "new_api_key",
    "split_api_key",
    "hash_secret",
    "verify_secret",
    "new_access_token",
    "token_digest",
    "AssertionRefused",
    "Assertion",
    "unverified_client_id",
    "verify_client_assertion",
    "check_jwks",
    "ASSERTION_TYPE",
    "MAX_ASSERTION_LIFETIME",
]

API_KEY_PREFIX = "iapk"
TOKEN_PREFIX = "iapt"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_ASSERTION_LIFETIME = timedelta(minutes=5)
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}  # ~16 MiB, tens of milliseconds: paid once per key per process
_MIN_RSA_BITS = 4096  # NHS England's signed JWT pattern asks for 4096-bit RSA keys


def new_api_key() -> tuple[str, str, str]:
    """(the key to hand over once, its key id, the scrypt hash to store)."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return f"{API_KEY_PREFIX}_{key_id}_{secret}", key_id, hash_secret(secret)


def split_api_key(key: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed API key, else None."""
    prefix, _, rest = key.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != API_KEY_PREFIX or len(key_id) != 16 or not secret or len(secret) > 128:
        return None
    return key_id, secret


def hash_secret(secret: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, dklen=32, **_SCRYPT)
    return "scrypt${n}${r}${p}${salt}${digest}".format(
        **_SCRYPT, salt=base64.b64encode(salt).decode(), digest=base64.b64encode(digest).decode()
    )


def verify_secret(secret: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(secret.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def new_access_token() -> tuple[str, str]:
    """(the token to hand over, its digest to store)."""
    token = f"{TOKEN_PREFIX}_{secrets.token_urlsafe(32)}"
    return token, token_digest(token)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class AssertionRefused(Exception):
    """A client assertion refused; `error` is the OAuth 2.0 error code, the message says why (no secrets)."""

    def __init__(self, error: str, message: str) -> None:
        super().__init__(message)
        self.error = error


@dataclass(frozen=True)
class Assertion:
    client_id: str
    jti: str
    expires_at: datetime


def unverified_client_id(assertion: str) -> str:
    """The `iss` an assertion claims (to find its keys); nothing is trusted until `verify_client_assertion`."""
    _check_jose_json(assertion)
    try:
        claims = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise AssertionRefused("invalid_request", "client_assertion is not a JWT") from None
    issuer = claims.get("iss")
    if not isinstance(issuer, str) or not issuer:
        raise AssertionRefused("invalid_request", "missing or invalid 'iss' claim in client_assertion JWT")
    return issuer


def verify_client_assertion(assertion: str, jwks_json: str, audience: str, now: datetime) -> Assertion:
    """Check signature (RS512 with the key named by `kid`), iss = sub, aud, exp within five minutes, jti present."""
    _check_jose_json(assertion)
    try:
        header = jwt.get_unverified_header(assertion)
    except jwt.PyJWTError:
        raise AssertionRefused("invalid_request", "client_assertion is not a JWT") from None
    if header.get("alg") != "RS512":
        raise AssertionRefused("invalid_request", "client_assertion must be signed with RS512")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise AssertionRefused("invalid_request", "missing 'kid' header in client_assertion JWT")
    key = _public_key(jwks_json, kid)
    if key is None:
        raise AssertionRefused("invalid_request", f"no public key with kid {kid[:40]!r} is registered for this client")
    try:
        claims = jwt.decode(
            assertion,
            key=key,
            algorithms=["RS512"],
            audience=audience,
            options={"require": ["iss", "sub", "aud", "exp", "jti"], "verify_exp": False},
        )
    except jwt.InvalidAudienceError:
        raise AssertionRefused("invalid_request", "missing or invalid 'aud' claim in client_assertion JWT") from None
    except jwt.MissingRequiredClaimError as error:
        raise AssertionRefused("invalid_request", f"missing {error.claim!r} claim in client_assertion JWT") from None
    except jwt.PyJWTError:
        raise AssertionRefused("invalid_request", "client_assertion signature or structure is invalid") from None
    if claims["iss"] != claims["sub"]:
        raise AssertionRefused("invalid_request", "'iss' and 'sub' claims must both be the client id")
    exp = claims["exp"]
    if not isinstance(exp, int | float) or isinstance(exp, bool) or (isinstance(exp, float) and not math.isfinite(exp)):
        raise AssertionRefused("invalid_request", "'exp' claim must be a number")
    # compared as numbers first (exact for any int or float): 1e300 or 10**400 is no datetime, and was an OverflowError
    if exp <= now.timestamp():
        raise AssertionRefused("invalid_request", "client_assertion has expired")
    if exp > now.timestamp() + (MAX_ASSERTION_LIFETIME + timedelta(seconds=10)).total_seconds():  # 10 s for clock skew
        raise AssertionRefused("invalid_request", "'exp' claim must be no more than 5 minutes in the future")
    expires = datetime.fromtimestamp(exp, tz=now.tzinfo)
    jti = claims["jti"]
    if not isinstance(jti, str) or not 0 < len(jti) <= 255 or "\x00" in jti:
        raise AssertionRefused("invalid_request", "'jti' claim must be a string of at most 255 characters, with no NUL")
    return Assertion(str(claims["iss"]), jti, expires)


def _check_jose_json(assertion: str) -> None:
    """The JOSE header and the claims read by the gateway's one JSON reader (adapters.jsonparse) before PyJWT reads
    them: a key twice (RFC 7515 4: "MUST reject" or take the last; the last `iss` is not who signed for the first),
    NaN, Infinity, 1e400 or nesting past its depth are an `invalid_request`, not whatever PyJWT's reader makes of them."""
    parts = assertion.split(".")
    if len(parts) != 3:
        raise AssertionRefused("invalid_request", "client_assertion is not a JWT")
    for name, part in (("header", parts[0]), ("claims", parts[1])):
        try:
            raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        except ValueError:  # binascii.Error
            raise AssertionRefused("invalid_request", "client_assertion is not a JWT") from None
        try:
            parse_json_object(raw, name)
        except GatewayInputError as refused:
            problem = refused.problems[0]
            raise AssertionRefused("invalid_request", f"client_assertion {name} ({problem.element}): {problem.message}") from None


def _public_key(jwks_json: str, kid: str) -> Any:
    for jwk in json.loads(jwks_json).get("keys", []):
        if jwk.get("kid") == kid:
            return RSAAlgorithm.from_jwk(json.dumps(jwk))
    return None


def check_jwks(text: str) -> str:
    """A JWKS document of RSA public keys, each with a `kid` and at least 4096 bits; returned normalised, or ValueError."""
    try:
        document = parse_json_object(text.encode("utf-8", "surrogatepass"), "JWKS")  # the one reader (deep, duplicates)
    except GatewayInputError as error:
        raise ValueError(f"not a JSON object: {error.problems[0].message}") from None
    keys = document.get("keys")
    if not isinstance(keys, list) or not keys:
        raise ValueError('a JWKS needs a non-empty "keys" array')
    kept = []
    for jwk in keys:
        if not isinstance(jwk, dict) or jwk.get("kty") != "RSA" or not jwk.get("kid"):
            raise ValueError("every key must be an RSA public key with a kid")
        if "d" in jwk:
            raise ValueError(f"key {jwk['kid']!r} is a private key: register the public key only")
        key = RSAAlgorithm.from_jwk(json.dumps(jwk))
        if key.key_size < _MIN_RSA_BITS:  # type: ignore[union-attr]
            raise ValueError(f"key {jwk['kid']!r} has {key.key_size} bits; at least {_MIN_RSA_BITS} are needed")  # type: ignore[union-attr]
        kept.append({k: jwk[k] for k in ("kty", "kid", "n", "e", "alg", "use") if k in jwk})
    return json.dumps({"keys": kept}, separators=(",", ":"))
