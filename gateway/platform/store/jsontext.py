"""The one JSON encoder for what the gateway stores and sends: resources, replies, AuditEvents.

Compact UTF-8 JSON (no spaces, non-ASCII as is), as `json.dumps(..., separators=(",", ":"), ensure_ascii=False)`
writes it, made by orjson: encoding stored resources and replies was ~8% of an ingest's Python time with the
standard library (bench/README.md). Anything orjson does not take as the standard library would (integers
beyond 64 bits, non-string keys, lone surrogates) goes to the standard library, so the outcome (the text, or
the error) is the standard library's; datetimes and dataclasses are not encoded silently by orjson either.
One spelling differs, not the value: a float in exponent form is written `1e-7` where the standard library
writes `1e-07` (tests/test_jsontext.py).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["dumps"]

_PLAIN = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS
_SORTED = _PLAIN | orjson.OPT_SORT_KEYS


def dumps(value: Any, sort_keys: bool = False) -> str:
    """`value` as compact JSON text (keys sorted when asked)."""
    try:
        return orjson.dumps(value, option=_SORTED if sort_keys else _PLAIN).decode("utf-8")
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=sort_keys)
