"""Senders' keys as the store indexes them: as sent when they fit the column, else a SHA-256 digest of them.

Message ids, MessageHeader ids and identifier values come from senders. No standard caps them at our column
sizes (HL7 v2.5 allows a 199-character MSH-10; an EI in OBR-3 or TXA-12 can be longer still), and none keeps out
a NUL, which a PostgreSQL text column cannot hold. Such an id is no reason to refuse a message or to crash: its
digest is its key in the index, written and looked up alike, so re-sends still meet and identifier searches
still find it. The value itself is kept as sent (the raw message and the resource's JSON); only the index holds
the digest.
"""

from __future__ import annotations

import hashlib

__all__ = ["MESSAGE_KEY_CHARS", "IDENTIFIER_KEY_CHARS", "message_key", "identifier_key"]

MESSAGE_KEY_CHARS = 128  # inbound_messages.message_id / header_id / correlation_id
IDENTIFIER_KEY_CHARS = 255  # resource_identifiers.system / value
_DIGEST = "sha256:"


def _key(value: str, limit: int) -> str:
    """As sent when it fits; else (too long, or holding a NUL, which PostgreSQL's text cannot) its digest."""
    if len(value) <= limit and "\x00" not in value:
        return value
    return _DIGEST + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def message_key(value: str | None) -> str | None:
    """A message, header or correlation id as `inbound_messages` holds it."""
    return None if value is None else _key(value, MESSAGE_KEY_CHARS)


def identifier_key(value: str) -> str:
    """An identifier's system or value as `resource_identifiers` holds it."""
    return _key(value, IDENTIFIER_KEY_CHARS)
