"""The one JSON reader for every body the gateway takes: strict, bounded, and saying where the input breaks.

Every route's JSON body (and a client assertion's JOSE header and claims) is read by `parse_json_object`, which
refuses, as a `GatewayInputError` naming where:
- bytes that are not UTF-8, text that is not JSON (line and column), a value that is not an object;
- nesting deeper than `MAX_DEPTH` arrays and objects (line and column): the standard library's reader recurses,
  and so does much that reads a document after it, so 100,000 `[` were a RecursionError (a 500);
- a key twice in one object (FHIR JSON forbids it; "last wins" would silently drop what the sender sent);
- `NaN`, `Infinity` and numbers beyond a double (`1e400`) that JSON has no value for;
- lone surrogate escapes (`"\\ud800"`), which no UTF-8 store or reply can hold.

Speed (it is on every ingest's path): the standard library's C reader with an `object_pairs_hook` (a duplicate
costs one `dict` of the pairs already made) and one walk of the containers for the depth, skipped when the body
has too few brackets to nest that deep. CPU per read, before -> after (process time, best of 9): a 10 kB BaRS
Bundle 35 -> 87 us, a 1 kB flat 111 case 7 -> 10 us, a 6 kB pathway referral 23 -> 42 us; an ingest takes
~2-3 ms of CPU. (orjson reads 2x faster but cannot see a duplicate key.) The slow paths (naming a duplicate's
element, the line of a too-deep nesting or an out-of-range number) run only for input that is refused.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from adapters.problems import GatewayInputError, Kind, Problem

__all__ = ["parse_json_object", "MAX_DEPTH"]

# Arrays and objects inside each other. A FHIR message is ~10 deep (Bundle.entry[].resource.item[].item[].answer[]...);
# 100 leaves room for deeply nested questionnaires and stays far below Python's recursion limit (1000).
MAX_DEPTH = 100


def parse_json_object(raw: bytes, what: str) -> dict[str, Any]:
    """Parse `raw` as one JSON object; refuse (naming where) anything `adapters.jsonparse` says a body must not be."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise GatewayInputError(Problem(Kind.STRUCTURE, what, f"body is not UTF-8 (byte {exc.start})")) from None
    try:
        value = _load(text, what, _unique_keys)
    except _DuplicateKey:  # read again, marking the object that holds it, to name its element
        marked = _load(text, what, _marking_duplicates)
        if _too_deep(marked, 0):
            raise _nested_too_deep(text, what) from None
        element, key = _duplicate_in(marked, what) or (what, "?")
        raise GatewayInputError(
            Problem(Kind.STRUCTURE, element, f"key {key[:64]!r} appears twice in one object (FHIR JSON forbids duplicate keys)")
        ) from None
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _too_deep(value, 0):  # fewer cannot nest that deep
        raise _nested_too_deep(text, what)
    if not isinstance(value, dict):
        raise GatewayInputError(Problem(Kind.STRUCTURE, what, f"expected a JSON object, got {type(value).__name__}"))
    if _SURROGATE_ESCAPE.search(text) and (where := _lone_surrogate(value, what)):
        raise GatewayInputError(Problem(Kind.VALUE, where, "not Unicode text: a lone surrogate escape (\\ud800-\\udfff)"))
    return value


def _load(text: str, what: str, hook: Any) -> Any:
    """`json.loads` with every refusal a GatewayInputError: syntax (line/column), depth, constants, out-of-range numbers."""
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float, object_pairs_hook=hook)
    except json.JSONDecodeError as exc:
        raise GatewayInputError(
            Problem(
                Kind.STRUCTURE,
                what,
                f"body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno} (char {exc.pos})",
            )
        ) from None
    except RecursionError:  # deeper than the C reader goes (~1000): refused like any nesting past MAX_DEPTH
        raise _nested_too_deep(text, what) from None
    except _NotANumber as exc:
        raise GatewayInputError(
            Problem(Kind.VALUE, what, f"body is not valid JSON: {exc.literal[:40]} is not a number JSON can carry{_at(text, exc.literal)}")
        ) from None
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        raise GatewayInputError(Problem(Kind.STRUCTURE, what, f"body is not valid JSON: {str(exc)[:200]}")) from None


class _DuplicateKey(Exception):
    pass


class _NotANumber(ValueError):
    def __init__(self, literal: str) -> None:
        super().__init__(literal)
        self.literal = literal


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _DuplicateKey()
    return obj


class _Duplicated(dict[str, Any]):
    """An object that held a key twice (only on the refusal path): `key` is the first such key."""

    key = ""


def _marking_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    marked, seen = _Duplicated(obj), set()
    for key, _ in pairs:
        if key in seen:
            marked.key = key
            break
        seen.add(key)
    return marked


def _duplicate_in(value: Any, path: str) -> tuple[str, str] | None:
    """(element, key) of the first object, in document order, that held a key twice."""
    if isinstance(value, _Duplicated):
        return f"{path}.{value.key}", value.key
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(item, dict | list):
            step = f"{path}.{key}" if isinstance(value, dict) else f"{path}[{key}]"
            if (found := _duplicate_in(item, step)) is not None:
                return found
    return None


def _finite_float(literal: str) -> float:
    number = float(literal)
    if math.isinf(number):  # 1e400: beyond a double; the standard library would make it inf
        raise _NotANumber(literal)
    return number


def _reject_constant(name: str) -> Any:
    raise _NotANumber(name)


def _too_deep(value: Any, depth: int) -> bool:
    """True if arrays and objects nest more than MAX_DEPTH deep. Recursion stops at MAX_DEPTH + 1 frames."""
    if type(value) not in _CONTAINERS:
        return False
    if depth >= MAX_DEPTH:
        return True
    for item in value.values() if type(value) is not list else value:
        if type(item) in _CONTAINERS and _too_deep(item, depth + 1):
            return True
    return False


_CONTAINERS = frozenset({dict, list, _Duplicated})


# A JSON string, or one of the characters that open or close a container, or a bare literal (number, true, ...)
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*+"|[\[{]|[\]}]|[^\s"\[\]{},:]+')


def _nested_too_deep(text: str, what: str) -> GatewayInputError:
    """The refusal of a body nested past MAX_DEPTH, naming the line and column where it goes too deep."""
    depth = 0
    for token in _TOKEN.finditer(text):
        char = token.group()[0]
        if char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return GatewayInputError(
                    Problem(
                        Kind.STRUCTURE, what, f"JSON nested more than {MAX_DEPTH} arrays and objects deep{_position(text, token.start())}"
                    )
                )
        elif char in "]}":
            depth -= 1
    return GatewayInputError(Problem(Kind.STRUCTURE, what, f"JSON nested more than {MAX_DEPTH} arrays and objects deep"))


def _at(text: str, literal: str) -> str:
    """Where a bare literal first stands outside a string, as ' at line L column C (char P)', or ''."""
    for token in _TOKEN.finditer(text):
        if token.group() == literal:
            return _position(text, token.start())
    return ""


def _position(text: str, pos: int) -> str:
    line = text.count("\n", 0, pos) + 1
    return f" at line {line} column {pos - text.rfind(chr(10), 0, pos)} (char {pos})"


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
