"""Strict JSON parsing that says where the input breaks."""

from __future__ import annotations

import json
import re
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
    if _SURROGATE_ESCAPE.search(text) and (where := _lone_surrogate(value, what)):
        raise GatewayInputError(Problem(Kind.VALUE, where, "not Unicode text: a lone surrogate escape (\\ud800-\\udfff)"))
    return value


# JSON allows "\ud800" alone (RFC 8259 calls what it means unpredictable); no UTF-8 store or reply can hold it
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _lone_surrogate(value: Any, path: str) -> str | None:
    """The first element (or key) holding a lone surrogate. A pair escaped as two is one character by now."""
    if isinstance(value, str):
        return None if value.isascii() or _is_unicode(value) else path
    if isinstance(value, dict):
        for key, item in value.items():
            if (where := _lone_surrogate(key, f"{path}.{key!a}") or _lone_surrogate(item, f"{path}.{key}")) is not None:
                return where
    if isinstance(value, list):
        for index, item in enumerate(value):
            if (where := _lone_surrogate(item, f"{path}[{index}]")) is not None:
                return where
    return None


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")
