"""gateway.platform.store.jsontext: the one encoder of stored and sent JSON writes what the standard library would."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.platform.store.jsontext import dumps

ROOT = Path(__file__).resolve().parent.parent


def _stdlib(value: Any, sort_keys: bool) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=sort_keys)


@pytest.mark.parametrize("path", sorted((ROOT / "fixtures").rglob("*.json")), ids=lambda p: str(p.relative_to(ROOT / "fixtures")))
@pytest.mark.parametrize("sort_keys", [False, True], ids=["as-built", "sorted"])
def test_fixtures_and_their_fhir_encode_as_the_standard_library_would(path: Path, sort_keys: bool) -> None:
    value = json.loads(path.read_bytes())
    assert dumps(value, sort_keys=sort_keys) == _stdlib(value, sort_keys)


@pytest.mark.parametrize(
    "value",
    [
        {"text": 'Zoë – “quoted” \u2028 \x7f \x01 \n \t \\ "', "n": -0.5, "ok": [True, False, None]},
        {"big": 10**30},  # beyond 64 bits: the standard library's text
        {1: "non-string key"},
        {"lone": "\ud800"},  # a lone surrogate passes as the standard library passes it
        {"b": 1, "a": {"d": 2, "c": 3}},
    ],
    ids=["text", "big-int", "int-key", "lone-surrogate", "nested"],
)
def test_edge_values_encode_as_the_standard_library_would(value: dict[Any, Any]) -> None:
    for sort_keys in (False, True):
        assert dumps(value, sort_keys=sort_keys) == _stdlib(value, sort_keys)


def test_what_the_standard_library_refuses_is_refused_not_encoded_silently() -> None:
    with pytest.raises(TypeError):
        dumps({"when": datetime(2026, 11, 23, tzinfo=UTC)})
    with pytest.raises(TypeError):
        dumps({"raw": b"bytes"})
