"""Plain JSON-shaped data <-> a FHIR Parameters resource, for operation replies that are a summary rather than a
resource the gateway stores ($outcome-summary). http://hl7.org/fhir/R4/parameters.html

An object becomes a parameter with `part`s, one per key; a list a parameter whose parts are all named `item`; a
string `valueString`, a whole number `valueInteger`, a fraction `valueDecimal`, true/false `valueBoolean`. Nulls
and empty lists or objects are left out (a parameter has exactly one value or its parts, never none).
"""

from __future__ import annotations

from typing import Any

__all__ = ["to_parameters", "from_parameters"]

_ITEM = "item"


def _parameter(name: str, value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return {"name": name, "valueBoolean": value}
    if isinstance(value, int):
        return {"name": name, "valueInteger": value}
    if isinstance(value, float):
        return {"name": name, "valueDecimal": value}
    if isinstance(value, str):
        return {"name": name, "valueString": value}
    if isinstance(value, dict):
        parts = [p for key, item in value.items() if (p := _parameter(str(key), item)) is not None]
    elif isinstance(value, list):
        parts = [p for item in value if (p := _parameter(_ITEM, item)) is not None]
    else:
        raise TypeError(f"cannot write a {type(value).__name__} as a Parameters value")
    return {"name": name, "part": parts} if parts else None


def to_parameters(data: dict[str, Any]) -> dict[str, Any]:
    """A Parameters resource holding `data` (a JSON object), one parameter per key."""
    parameters = [p for key, value in data.items() if (p := _parameter(key, value)) is not None]
    return {"resourceType": "Parameters", "parameter": parameters} if parameters else {"resourceType": "Parameters"}


def _value(parameter: dict[str, Any]) -> Any:
    parts = parameter.get("part")
    if parts is None:
        return next(v for k, v in parameter.items() if k.startswith("value"))
    if all(p["name"] == _ITEM for p in parts):
        return [_value(p) for p in parts]
    return {p["name"]: _value(p) for p in parts}


def from_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """`to_parameters`' data back (what was left out stays out)."""
    return {p["name"]: _value(p) for p in parameters.get("parameter", [])}
