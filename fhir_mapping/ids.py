"""Deterministic resource ids: uuid5 of (resource type, source system, source identifier).

A replay of the same input maps to the same ids, so nothing duplicates
(Microsoft FHIR-Converter's ID templates; FHIR-Converter #76, HAPI #3141).
"""

from __future__ import annotations

import uuid

__all__ = ["resource_id", "NAMESPACE"]

NAMESPACE = uuid.UUID("6f1c2a4e-8b1d-5c3e-9a70-1a2b3c4d5e6f")


def resource_id(resource_type: str, system: str, value: str) -> str:
    """Stable id for the resource of `resource_type` that the source knows as `system|value`."""
    return str(uuid.uuid5(NAMESPACE, f"{resource_type}|{system}|{value}"))
