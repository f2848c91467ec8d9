"""The JSON type of each element an adapter reads, checked before it reads any (FHIR JSON inputs).

A table per resource type maps a dotted element path ("[]" = each item of an array) to the JSON type it must
have; `JsonShape` compiles it into a tree once, so a check visits only the elements present. A wrongly typed
element is then a STRUCTURE error naming its path (400), never read as something else and never a crash (500).
A null element is read as absent, as the adapters read it. A null item of an array is an error (what it stood
for would be lost), except where FHIR JSON allows one: in an array of primitives whose `_element` array has the
item's extensions at the same index (`"given": [null, "Sam"], "_given": [{"extension": [...]}, null]`, a name
part with no value, only e.g. a data-absent-reason). Adapters read such an item as absent (`present`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from adapters.problems import Kind, ProblemList

__all__ = ["Shape", "JsonShape", "CODEABLE", "REFERENCE", "IDENTIFIERS", "under", "present"]

Shape = dict[str, type]

CODEABLE: Shape = {"coding": list, "coding[]": dict, "coding[].system": str, "coding[].code": str, "coding[].display": str, "text": str}
REFERENCE: Shape = {"reference": str}
IDENTIFIERS: Shape = {"identifier": list, "identifier[]": dict, "identifier[].system": str, "identifier[].value": str}
_JSON_TYPE: dict[type, str] = {dict: "an object", list: "an array", str: "a string"}


def present(values: Any) -> tuple[Any, ...]:
    """The items of a checked array of primitives that have a value (null items, allowed beside their extensions, left out)."""
    return tuple(v for v in values or () if v is not None)


def under(prefix: str, shape: Shape) -> Shape:
    """`shape` for the element at `prefix` (a CodeableConcept, a Reference, ...)."""
    return {f"{prefix}.{key}": kind for key, kind in shape.items()}


@dataclass
class _Element:
    kind: type | None = None  # the element's own JSON type
    item: type | None = None  # for an array: each item's
    children: dict[str, _Element] = field(default_factory=dict)  # of the object, or of each object in the array


class JsonShape:
    """A `Shape` table compiled into a tree of elements."""

    def __init__(self, shape: Shape) -> None:
        self._root: dict[str, _Element] = {}
        for dotted, kind in shape.items():
            level = self._root
            parts = dotted.split(".")
            for depth, part in enumerate(parts):
                element = level.setdefault(part.removesuffix("[]"), _Element())
                if depth == len(parts) - 1:
                    if part.endswith("[]"):
                        element.item = kind
                    else:
                        element.kind = kind
                level = element.children

    def check(self, resource: dict[str, Any], path: str, problems: ProblemList) -> None:
        """An error in `problems` for each element of the shape present in `resource` without its JSON type."""
        _check(resource, self._root, path, problems)


def _check(node: dict[str, Any], level: dict[str, _Element], path: str, problems: ProblemList) -> None:
    for name, element in level.items():
        value = node.get(name)
        if value is None:  # absent, or null (read as absent)
            continue
        if element.kind is not None and not isinstance(value, element.kind):
            _wrong(problems, f"{path}.{name}", element.kind, value)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if item is None and element.item in _PRIMITIVE and _has_extensions_at(node.get(f"_{name}"), index):
                    continue
                if element.item is not None and not isinstance(item, element.item):
                    _wrong(problems, f"{path}.{name}[{index}]", element.item, item)
                elif element.children and isinstance(item, dict):
                    _check(item, element.children, f"{path}.{name}[{index}]", problems)
        elif element.children and isinstance(value, dict):
            _check(value, element.children, f"{path}.{name}", problems)


_PRIMITIVE = (str,)


def _has_extensions_at(extensions: Any, index: int) -> bool:
    """FHIR JSON: a primitive array's item may be null where its `_element` array holds an object at that index."""
    return isinstance(extensions, list) and index < len(extensions) and isinstance(extensions[index], dict)


def _wrong(problems: ProblemList, element: str, kind: type, value: Any) -> None:
    problems.error(Kind.STRUCTURE, element, f"must be {_JSON_TYPE[kind]} (FHIR JSON), got {_json_type(value)}")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return _JSON_TYPE.get(type(value), type(value).__name__)
