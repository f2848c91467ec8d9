"""A BaRS message Bundle as the sender wrote it: its entries, the JSON type of each element read (`SHAPES`),
and its references, resolved leniently on form and strictly on existence (`Message`). Read by `adapters.bars`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from adapters.json_shapes import CODEABLE, IDENTIFIERS, REFERENCE, JsonShape, Shape, under
from adapters.problems import Kind, ProblemList

GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")
_REFERENCE_IN_TEXT = re.compile(rb'"reference"[ \t\r\n]*:[ \t\r\n]*"([^"]*)"')  # no escapes (`_all_sound`)
_TYPE_ID_RE = re.compile(r"[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}\Z")  # a relative reference, Type/id


@dataclass
class Entry:
    index: int
    full_url: str | None
    resource: dict[str, Any]

    @property
    def path(self) -> str:
        return f"Bundle.entry[{self.index}].resource"


class Message:
    """The Bundle's entries with reference resolution that records what it had to forgive."""

    def __init__(self, bundle: dict[str, Any], problems: ProblemList) -> None:
        self.problems = problems
        self.entries: list[Entry] = []
        self._targets: dict[str, Entry] = {}  # fullUrl or "Type/id" -> the first entry it names (_lookup)
        raw_entries = bundle.get("entry")
        if not isinstance(raw_entries, list) or not raw_entries:
            problems.error(Kind.REQUIRED, "Bundle.entry", "a message Bundle must have entries, the first a MessageHeader")
            return
        for index, item in enumerate(raw_entries):
            resource = item.get("resource") if isinstance(item, dict) else None
            if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
                problems.error(Kind.STRUCTURE, f"Bundle.entry[{index}].resource", "entry has no resource with a resourceType")
                continue
            full_url = item.get("fullUrl")
            if isinstance(full_url, str) and full_url.startswith("urn:uuid:") and not is_uuid(full_url[9:]):
                problems.warning(Kind.VALUE, f"Bundle.entry[{index}].fullUrl", "urn:uuid fullUrl is not a UUID")
            entry = Entry(index, full_url if isinstance(full_url, str) else None, resource)
            self.entries.append(entry)
            if entry.full_url is not None:
                self._targets.setdefault(entry.full_url, entry)
            if rid := resource.get("id"):
                self._targets.setdefault(f"{resource['resourceType']}/{rid}", entry)

    def of_type(self, resource_type: str) -> list[Entry]:
        return [e for e in self.entries if e.resource["resourceType"] == resource_type]

    def resolve(self, ref: Any, element: str, expected: str, required: bool) -> Entry | None:
        """Find the entry a Reference points at. Lenient on form (with a warning), strict on existence."""
        target = ref.get("reference") if isinstance(ref, dict) else None
        if not isinstance(target, str) or not target:
            if required:
                self.problems.error(Kind.REQUIRED, element, f"a reference to the {expected} is required")
            return None
        found = self._lookup(target)
        if found is None and is_uuid(target):
            found = self._lookup(f"urn:uuid:{target}")
            if found is not None:
                self.problems.warning(
                    Kind.VALUE, element, f"reference {target!r} lacks the 'urn:uuid:' prefix; matched to {found.path} by its UUID"
                )
        if found is None:
            kind = self.problems.error if required else self.problems.warning
            kind(Kind.INVALID, element, f"reference {target!r} resolves to no entry in the Bundle")
            return None
        if found.resource["resourceType"] != expected:
            self.problems.error(Kind.INVALID, element, f"reference points at a {found.resource['resourceType']}, expected a {expected}")
            return None
        return found

    def _lookup(self, target: str) -> Entry | None:
        """The first entry whose fullUrl is `target` or whose resource is `target` as "Type/id" (an index made once:
        a message resolves a score of references)."""
        return self._targets.get(target)

    def check_all_references(self, raw: bytes | None = None) -> None:
        """Warn about every reference in the message that is malformed or dangling (never dropped silently).

        `raw`, the message's text, lets a message whose references are all sound skip the walk over every
        element: its references are read from the text first (`_all_sound`), and the walk, which names each
        problem's element, runs only if one of them is not sound or the text cannot be read that way."""
        if raw is not None and self._all_sound(raw):
            return
        for entry in self.entries:
            for element, target in references(entry.resource, entry.path):
                if (fault := self._fault(target)) is not None:
                    self.problems.warning(fault[0], element, fault[1])

    def _fault(self, target: str) -> tuple[Kind, str] | None:
        """What is wrong with a reference (its kind and the warning's text), or None if it is sound."""
        if target.startswith(("#", "http://", "https://")):
            return None
        if target.startswith("urn:uuid:"):
            if not is_uuid(target[9:]):
                return Kind.VALUE, f"reference {target!r} is not a UUID and resolves to nothing"
            if self._lookup(target) is None:
                return Kind.INVALID, f"reference {target!r} resolves to no entry in the Bundle"
            return None
        if is_uuid(target):
            found = self._lookup(f"urn:uuid:{target}")
            where = f"read as {found.path}" if found else "resolves to nothing"
            return Kind.VALUE, f"reference {target!r} lacks the 'urn:uuid:' prefix; {where}"
        if _TYPE_ID_RE.match(target) is None:
            return Kind.VALUE, f"reference {target!r} is neither urn:uuid nor Type/id"
        return None

    def _all_sound(self, raw: bytes) -> bool:
        """True if no `"reference": "..."` in the text has a fault. The text holds every reference the walk meets
        (and maybe more; the text is UTF-8, `parse_json_object`), unless a key or value is written with escapes:
        then False."""
        if b"\\" in raw:
            return False
        return all(self._fault(found.group(1).decode("utf-8", "replace")) is None for found in _REFERENCE_IN_TEXT.finditer(raw))


# The JSON type of every element of the message this adapter reads, by resource type (adapters.json_shapes).
SHAPE_TABLES: dict[str, Shape] = {
    "MessageHeader": {
        "id": str,
        "eventCoding": dict,
        "eventCoding.system": str,
        "eventCoding.code": str,
        "reason": dict,
        **under("reason", CODEABLE),
        "destination": list,
        "destination[]": dict,
        "destination[].endpoint": str,
        "focus": list,
        "focus[]": dict,
        **under("focus[]", REFERENCE),
        "source": dict,
        "source.endpoint": str,
    },
    "ServiceRequest": {
        "status": str,
        "subject": dict,
        **under("subject", REFERENCE),
        "encounter": dict,
        **under("encounter", REFERENCE),
        "basedOn": list,
        "basedOn[]": dict,
        **under("basedOn[]", REFERENCE),
        "reasonCode": list,
        "reasonCode[]": dict,
        **under("reasonCode[]", CODEABLE),
        "authoredOn": str,
        "occurrencePeriod": dict,
        "occurrencePeriod.start": str,
        "occurrencePeriod.end": str,
    },
    "Patient": {
        **IDENTIFIERS,
        "name": list,
        "name[]": dict,
        "name[].use": str,
        "name[].family": str,
        "name[].given": list,
        "name[].given[]": str,
        "name[].prefix": list,
        "name[].prefix[]": str,
        "birthDate": str,
        "gender": str,
        "address": list,
        "address[]": dict,
        "address[].line": list,
        "address[].line[]": str,
        "address[].city": str,
        "address[].postalCode": str,
        "telecom": list,
        "telecom[]": dict,
        "telecom[].system": str,
        "telecom[].value": str,
        "generalPractitioner": list,
        "generalPractitioner[]": dict,
        **under("generalPractitioner[]", REFERENCE),
        "generalPractitioner[].identifier": dict,
        "generalPractitioner[].identifier.system": str,
        "generalPractitioner[].identifier.value": str,
    },
    "Encounter": {"period": dict, "period.start": str},
    "CarePlan": {
        "period": dict,
        "period.start": str,
        "activity": list,
        "activity[]": dict,
        "activity[].outcomeCodeableConcept": list,
        "activity[].outcomeCodeableConcept[]": dict,
        **under("activity[].outcomeCodeableConcept[]", CODEABLE),
    },
    "Flag": {
        "status": str,
        "category": list,
        "category[]": dict,
        **under("category[]", CODEABLE),
        "code": dict,
        **under("code", CODEABLE),
    },
    "Organization": IDENTIFIERS,
}
SHAPES = {name: JsonShape(shape) for name, shape in SHAPE_TABLES.items()}


def references(node: Any, path: str) -> list[tuple[str, str]]:
    """Every (element path, reference) in document order; only objects and arrays are descended into.

    The steps down are kept as keys and indexes, and written out as a path only for a reference found
    (most of a message's objects hold none): this walk runs over every element of every message."""
    found: list[tuple[str, str]] = []
    _walk_references(node, [], path, found)
    return found


def _walk_references(node: Any, steps: list[str | int], path: str, found: list[tuple[str, str]]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                found.append((path + "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in steps) + ".reference", value))
            elif isinstance(value, (dict, list)):
                steps.append(key)
                _walk_references(value, steps, path, found)
                steps.pop()
    else:
        for index, item in enumerate(node):
            if isinstance(item, (dict, list)):
                steps.append(index)
                _walk_references(item, steps, path, found)
                steps.pop()


def is_uuid(value: str) -> bool:
    """8-4-4-4-12 hex digits, nothing after (so also what `uuid.UUID` reads)."""
    return GUID_RE.match(value) is not None
