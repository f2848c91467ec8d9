"""The JSON type of each element an adapter reads, checked before it reads any (FHIR JSON inputs).

A table per resource type maps a dotted element path ("[]" = each item of an array) to the JSON type it must
have. A wrongly typed element is then a STRUCTURE error naming its path (400), never read as something else and
never a crash (500). A null element is read as absent, as the adapters read it; a null item of an array is an
error (what it stood for would be lost).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from adapters.problems import Kind, ProblemList

__all__ = ["Shape", "CODEABLE", "REFERENCE", "IDENTIFIERS", "under", "check_shape"]

Shape = dict[str, type]

CODEABLE: Shape = {"coding": list, "coding[]": dict, "coding[].system": str, "coding[].code": str, "coding[].display": str, "text": str}
REFERENCE: Shape = {"reference": str}
IDENTIFIERS: Shape = {"identifier": list, "identifier[]": dict, "identifier[].system": str, "identifier[].value": str}
_JSON_TYPE: dict[type, str] = {dict: "an object", list: "an array", str: "a string"}


def under(prefix: str, shape: Shape) -> Shape:
    """`shape` for the element at `prefix` (a CodeableConcept, a Reference, ...)."""
    return {f"{prefix}.{key}": kind for key, kind in shape.items()}


def check_shape(resource: dict[str, Any], shape: Shape, path: str, problems: ProblemList) -> None:
    """An error in `problems` for each element of `shape` present in `resource` without its JSON type."""
    for dotted, kind in shape.items():
        for element, value in _values_at(resource, dotted.split("."), path):
            absent = value is None and not element.endswith("]")
            if not absent and not isinstance(value, kind):
                problems.error(Kind.STRUCTURE, element, f"must be {_JSON_TYPE[kind]} (FHIR JSON), got {_json_type(value)}")


def _values_at(node: Any, parts: list[str], path: str) -> Iterator[tuple[str, Any]]:
    """(element path, value) for each value at `parts` under `node`; a container of the wrong type is not entered
    (its own entry in the shape reports it)."""
    if not isinstance(node, dict):
        return
    name, rest = parts[0].removesuffix("[]"), parts[1:]
    value = node.get(name)
    if parts[0].endswith("[]"):
        for index, item in enumerate(value if isinstance(value, list) else []):
            yield from ([(f"{path}.{name}[{index}]", item)] if not rest else _values_at(item, rest, f"{path}.{name}[{index}]"))
    elif not rest:
        if name in node:
            yield f"{path}.{name}", value
    else:
        yield from _values_at(value, rest, f"{path}.{name}")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return _JSON_TYPE.get(type(value), type(value).__name__)
