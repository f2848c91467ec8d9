"""A hypothesis strategy for JSON built to break a reader, from documents a route takes (tests/test_fuzz_adapters.py,
tests/test_openapi_fuzz.py): one element nested deep (around adapters.jsonparse.MAX_DEPTH, or 100,000), a key
written twice in one object, or a number JSON has no value for (1e400, NaN, Infinity, -0, huge integers)."""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import strategies as st

from adapters.jsonparse import MAX_DEPTH

__all__ = ["hostile_json", "filled_paths", "EXTREME_NUMBERS"]

EXTREME_NUMBERS = [
    "1e400",
    "-1e400",
    "1.7976931348623157e309",
    "NaN",
    "Infinity",
    "-Infinity",
    "-0",
    "-0.0",
    "1e-400",
    "4.9e-324",
    "18446744073709551616",
    "-9223372036854775809",
    "1" + "0" * 30,
    "9" * 5000,
]
_PLACEHOLDER = "\x00hostile\x00"


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path of every element (the document itself first)."""
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    return [path, *(found for key, value in children for found in _paths(value, (*path, key)))]


def _with(document: Any, path: tuple[Any, ...], text: str) -> bytes:
    """The document as JSON with the element at `path` written as `text` (any text, valid JSON or not)."""
    if not path:
        return text.encode()
    copy = json.loads(json.dumps(document))
    node = copy
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = _PLACEHOLDER
    return json.dumps(copy).replace(json.dumps(_PLACEHOLDER), text, 1).encode()


def _element(document: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        document = document[key]
    return document


@st.composite
def hostile_json(draw: st.DrawFn, documents: list[bytes]) -> bytes:
    document = json.loads(draw(st.sampled_from(documents)))
    paths = _paths(document)
    kind = draw(st.sampled_from(["deep", "duplicate", "number"]))
    if kind == "deep":
        depth = draw(st.sampled_from([MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 1_000, 20_000]) | st.integers(1, 2 * MAX_DEPTH))
        opener, inner, closer = draw(st.sampled_from([("[", "", "]"), ('{"a":', "1", "}"), ('[{"a":', "[]", "}]")]))
        return _with(document, draw(st.sampled_from(paths)), opener * depth + inner + closer * depth)
    if kind == "number":
        return _with(document, draw(st.sampled_from(paths)), draw(st.sampled_from(EXTREME_NUMBERS)))
    objects = [p for p in paths if isinstance(_element(document, p), dict) and _element(document, p)]
    if not objects:
        return json.dumps(document).encode()
    path = draw(st.sampled_from(objects))
    target = _element(document, path)
    key = draw(st.sampled_from(sorted(target)))
    again = draw(st.sampled_from([target[key], None, "other", 1, [], {}]))
    return _with(document, path, "{" + json.dumps(key) + ":" + json.dumps(again) + "," + json.dumps(target)[1:])


def filled_paths(template: str) -> list[str]:
    """An OpenAPI path template's parameters filled so a route reads its body: an operation each kind (CAS case,
    pathway episode) knows, a resource type for `{type}`, and an id nothing has for any other parameter."""
    from gateway.cas.rules.ops import OPERATIONS
    from gateway.pathways.rules.steps import EPISODE_OPERATIONS

    urls = [re.sub(r"\{(?!operation\})(\w+)\}", lambda found: "Task" if found.group(1) == "type" else "no-such", template)]
    if "{operation}" in template:
        urls = [urls[0].replace("{operation}", f"${name}") for name in (min(OPERATIONS), min(EPISODE_OPERATIONS))]
    return urls
