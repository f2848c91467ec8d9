"""Strict JSON parsing that says where the input breaks."""

from __future__ import annotations

import json
from typing import Any

from adapters.problems import GatewayInputError, Kind, Problem

__all__ = ["parse_json_object"]


def parse_json_object(raw: bytes, what: str) -> dict[str, Any]:
    """Parse `raw` as one JSON object; refuse bad encoding, bad JSON (with line/column) or a non-object."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise GatewayInputError(Problem(Kind.STRUCTURE, what, f"body is not UTF-8 (byte {exc.start})")) from None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise GatewayInputError(
            Problem(
                Kind.STRUCTURE,
                what,
                f"body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno} (char {exc.pos})",
            )
        ) from None
    except ValueError as exc:
        raise GatewayInputError(Problem(Kind.STRUCTURE, what, f"body is not valid JSON: {exc}")) from None
    if not isinstance(value, dict):
        raise GatewayInputError(Problem(Kind.STRUCTURE, what, f"expected a JSON object, got {type(value).__name__}"))
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")
