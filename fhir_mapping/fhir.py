"""The one import shim for FHIR models.

The gateway uses fhir.resources' R4B models: wire-compatible with R4 4.0.1 for the
resources used here (UK Core is R4). Import FHIR classes from here, nowhere else, so
a move to another model package is one edit.

Mapping code builds resources with `build(Model, **elements)`: the FHIR JSON is written once,
in the model's element order, and checked against the model's elements and primitive
validators (`conform`); the R4B object is made only when asked for (`Built.model()`). Check
mode (`IAP_CHECK_FHIR=1`, the whole test suite) also validates each one with its model and
requires the model's own serialisation to be identical. JSON from outside goes through the
model once, where it comes in (`Model.model_validate`, then `to_json_dict`: e.g. a sender's
QuestionnaireResponse, `fhir_mapping.scoring.read_response`).
"""

from __future__ import annotations

import json
import os
import types
import typing
from dataclasses import dataclass
from functools import cache
from typing import Any, Generic, TypeVar

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle, BundleEntry, BundleEntryResponse, BundleLink
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.careplan import CarePlan
from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.coding import Coding
from fhir.resources.R4B.communicationrequest import CommunicationRequest
from fhir.resources.R4B.documentreference import DocumentReference
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.episodeofcare import EpisodeOfCare
from fhir.resources.R4B.flag import Flag
from fhir.resources.R4B.messageheader import MessageHeader
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.questionnaire import Questionnaire
from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse
from fhir.resources.R4B.resource import Resource
from fhir.resources.R4B.servicerequest import ServiceRequest
from fhir.resources.R4B.task import Task
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from pydantic import TypeAdapter

__all__ = [
    "Bundle",
    "BundleEntry",
    "BundleEntryResponse",
    "BundleLink",
    "CapabilityStatement",
    "CarePlan",
    "CodeableConcept",
    "Coding",
    "CommunicationRequest",
    "DocumentReference",
    "Encounter",
    "EpisodeOfCare",
    "Flag",
    "MessageHeader",
    "Observation",
    "OperationOutcome",
    "Patient",
    "Questionnaire",
    "QuestionnaireResponse",
    "Resource",
    "ServiceRequest",
    "Task",
    "to_json_dict",
    "build",
    "Built",
    "check_fhir",
    "checking",
    "FhirBuildMismatch",
    "CHECK_ENV",
    "conform",
]

R = TypeVar("R", bound="Resource")

CHECK_ENV = "IAP_CHECK_FHIR"


class FhirBuildMismatch(AssertionError):
    """In check mode: a built resource is not exactly what fhir.resources makes of it (invalid, or serialised differently)."""


@dataclass(frozen=True, slots=True)
class Built(Generic[R]):
    """A FHIR resource the gateway built: its FHIR JSON now, its fhir.resources R4B object on demand.

    Why not the model object itself: validating a model from dicts and dumping it back cost
    ~2 ms per NHS 111 referral (the models' Python validators and custom serialiser), most of
    the mapping time (bench/README.md). Every value given to `build` comes from the gateway's
    own checked types (adapters' source models, rule files, code tables), so the mapping
    writes the JSON the model would serialise, once. `IAP_CHECK_FHIR=1` (set for the whole
    test suite) validates every built resource with its R4B model and fails on any difference
    from the model's own serialisation, byte for byte, so a mapping change that the models
    would reject or write differently cannot pass the tests.
    """

    model_class: type[R]
    json: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.json["id"])

    @property
    def resource_type(self) -> str:
        return str(self.json["resourceType"])

    def model(self) -> R:
        """The fhir.resources R4B object (validated now)."""
        return self.model_class.model_validate(self.json)


def checking() -> bool:
    """Check mode (`IAP_CHECK_FHIR=1`): every built resource and reply Bundle is validated by its R4B model."""
    return os.environ.get(CHECK_ENV) == "1"


def to_json_dict(resource: Resource | Built[Any]) -> dict[str, Any]:
    """The resource as FHIR JSON (a plain dict, empty elements left out). A `Built` hands over its JSON, not a copy."""
    if isinstance(resource, Built):
        return resource.json
    return resource.model_dump(mode="json", exclude_none=True, by_alias=True)


@cache
def _layout(model: type[Resource]) -> tuple[str, dict[str, str], dict[str, int]]:
    """(resourceType, python field name -> JSON name, JSON name -> position): the order fhir.resources serialises in."""
    aliases = {name: info.alias or name for name, info in model.model_fields.items()}
    rank = {element: index for index, element in enumerate(model.elements_sequence())}
    return model.get_resource_type(), aliases, rank


def build(model: type[R], **fields: Any) -> Built[R]:
    """A FHIR resource from FHIR-JSON-shaped values (dicts for datatypes, ISO strings for dates and times).

    Elements may be named as in JSON or by the model's Python names (`for_fhir`, `class_fhir`);
    None and empty lists are left out and the elements put in the model's order, as the model
    would serialise them. Nested values are taken as given: write them in FHIR element order
    (check mode holds every call site to that). An element the model does not have is an error.
    """
    resource_type, aliases, rank = _layout(model)
    elements: list[tuple[int, str, Any]] = []
    for name, value in fields.items():
        if value is None or (isinstance(value, list) and not value):
            continue
        element = aliases.get(name, name)
        if element not in rank:
            raise TypeError(f"{resource_type} has no element {name!r}")
        elements.append((rank[element], element, value))
    elements.sort(key=lambda item: item[0])
    built = Built(model, conform(model, {"resourceType": resource_type, **{element: value for _, element, value in elements}}))
    if checking():
        check_fhir(model, built.json)
    return built


def conform(model: type[Any], data: Any) -> dict[str, Any]:
    """`data` as `model`'s FHIR JSON, elements in the model's order at every level; ValueError unless it is shaped
    as the model has it: known elements only, lists where the model has lists, no empty or null values, and every
    primitive passing the model's own validator (String, Code, Uri, dates, ...).

    Always run by `build`: values from senders (names, codes, free text) reach the JSON through the adapters,
    and an invalid one must fail here as it failed in the model (a 500, nothing stored), not be stored. It checks
    the primitives as the models do without building the models (a fifth of the time). Objects already in order
    are returned as they are (no copy). Choice-type and serialisation rules are held by check mode in the tests.
    """
    try:
        return _conform(model, data)
    except _NotConform as error:
        raise ValueError(f"{model.__name__}{''.join(reversed(error.path))}: {error.reason}") from None


class _NotConform(Exception):
    def __init__(self, reason: str) -> None:
        self.reason, self.path = reason, list[str]()

    def with_path(self, step: str) -> _NotConform:
        self.path.append(step)
        return self


def _conform(model: Any, data: Any) -> dict[str, Any]:
    if data.__class__ is not dict or not data:
        raise _NotConform("expected a non-empty JSON object")
    if model.has_resource_base() and data.get("resourceType") != model.get_resource_type():
        if model.get_resource_type() not in ("Resource", "DomainResource"):  # a contained or entry resource: its own type
            raise _NotConform(f"resourceType {data.get('resourceType')!r}, expected {model.get_resource_type()}")
        try:
            model = get_fhir_model_class(str(data.get("resourceType")))
        except KeyError:
            raise _NotConform(f"unknown resourceType {data.get('resourceType')!r}") from None
    elements = _elements(model)
    in_order, last = True, -2
    changed: dict[str, Any] = {}
    for key, value in data.items():
        spec = elements.get(key)
        if spec is None:
            raise _NotConform(f"{model.__name__} has no element {key!r}").with_path(f".{key}")
        rank, is_list, check, is_model = spec
        if rank <= last:
            in_order = False
        last = rank
        if not is_list:
            try:
                if value is None:
                    raise _NotConform("null")
                if is_model:
                    item = _conform(check, value)
                    if item is not value:
                        changed[key] = item
                elif rank >= 0:  # not resourceType
                    check(value)
            except _NotConform as error:
                raise error.with_path(f".{key}") from None
            except ValueError as error:
                raise _NotConform(_reason(error)).with_path(f".{key}") from None
            continue
        if value.__class__ is not list or not value:
            raise _NotConform("expected a non-empty list").with_path(f".{key}")
        for index, item in enumerate(value):
            try:
                if item is None:
                    raise _NotConform("null")
                if is_model:
                    new = _conform(check, item)
                    if new is not item:
                        changed.setdefault(key, list(value))[index] = new
                else:
                    check(item)
            except _NotConform as error:
                raise error.with_path(f".{key}[{index}]") from None
            except ValueError as error:
                raise _NotConform(_reason(error)).with_path(f".{key}[{index}]") from None
    if in_order and not changed:
        return data
    merged = data | changed
    return {key: merged[key] for key in sorted(merged, key=lambda k: elements[k][0])}


def _reason(error: ValueError) -> str:
    errors = getattr(error, "errors", None)
    return str(errors()[0]["msg"]) if callable(errors) else str(error)


@cache
def _elements(model: Any) -> dict[str, tuple[int, bool, Any, bool]]:
    """JSON name -> (position in the model's serialisation, is a list, the element's model class or a validator
    for its primitive type, is a model). Positions as fhir.resources writes them: resourceType, then the elements
    in order, each primitive's `_element` (extensions) right after it."""
    position = {"resourceType": -1}
    for index, element in enumerate(model.elements_sequence()):
        position[element], position[f"_{element}"] = 2 * index, 2 * index + 1
    out: dict[str, tuple[int, bool, Any, bool]] = {}
    if model.has_resource_base():
        out["resourceType"] = (-1, False, None, False)
    for name, info in model.model_fields.items():
        alias = info.alias or name
        if alias not in position:
            continue  # fhir_comments: never written by the gateway
        annotation = _without_none(info.annotation)
        is_list = typing.get_origin(annotation) is list
        if is_list:
            annotation = _without_none(typing.get_args(annotation)[0])
        element_model = _model_class(annotation)
        check = element_model or TypeAdapter(annotation).validator.validate_python
        out[alias] = (position[alias], is_list, check, element_model is not None)
    return out


def _without_none(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _model_class(annotation: Any) -> type[Any] | None:
    """The FHIR model class of a complex element: fhir.resources names them `abc.<Type>Type` in annotations."""
    if isinstance(annotation, type) and issubclass(annotation, FHIRAbstractModel):
        return annotation
    name = getattr(annotation, "__name__", "")
    if getattr(annotation, "__module__", "") == "abc" and name.endswith("Type"):
        return get_fhir_model_class(name.removesuffix("Type"))
    return None


def check_fhir(model: type[Resource], data: dict[str, Any]) -> None:
    """Validate `data` with `model` and require the model's own serialisation of it to be the same, key order included."""
    try:
        dumped = model.model_validate(data).model_dump(mode="json", exclude_none=True, by_alias=True)
    except ValueError as error:
        raise FhirBuildMismatch(f"{model.__name__} is not valid FHIR: {error}") from error
    ours, theirs = json.dumps(data, ensure_ascii=False), json.dumps(dumped, ensure_ascii=False)
    if ours != theirs:
        at = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), min(len(ours), len(theirs)))
        raise FhirBuildMismatch(
            f"{model.__name__} as built differs from fhir.resources' serialisation at character {at}:\n"
            f"  built: ...{ours[max(0, at - 80) : at + 80]}\n  model: ...{theirs[max(0, at - 80) : at + 80]}"
        )
