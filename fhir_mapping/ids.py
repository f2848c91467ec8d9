"""Deterministic resource ids: uuid5 of (resource type, source system, source identifier).

A replay of the same input maps to the same ids, so nothing duplicates
(Microsoft FHIR-Converter's ID templates; FHIR-Converter #76, HAPI #3141).
"""

from __future__ import annotations

import uuid
from hashlib import sha1

__all__ = ["resource_id", "NAMESPACE"]

NAMESPACE = uuid.UUID("6f1c2a4e-8b1d-5c3e-9a70-1a2b3c4d5e6f")
_NAMESPACE_BYTES = NAMESPACE.bytes


def resource_id(resource_type: str, system: str, value: str) -> str:
    """Stable id for the resource of `resource_type` that the source knows as `system|value`.

    `str(uuid.uuid5(NAMESPACE, f"{resource_type}|{system}|{value}"))`, written out: the same SHA-1 and the same
    version and variant bits (RFC 9562, section 5.5), without building a `UUID` object (a referral makes seven ids,
    and the object was two thirds of the time; tests/test_ids.py holds the two to the same answers).
    """
    digest = bytearray(sha1(_NAMESPACE_BYTES + f"{resource_type}|{system}|{value}".encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # the RFC's variant
    text = digest.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
