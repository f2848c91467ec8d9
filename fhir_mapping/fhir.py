"""The one import shim for FHIR models.

The gateway uses fhir.resources' R4B models: wire-compatible with R4 4.0.1 for the
resources used here (UK Core is R4). Import FHIR classes from here, nowhere else, so
a move to another model package is one edit.
"""

from __future__ import annotations

from typing import Any, TypeVar

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
]

R = TypeVar("R", bound="Resource")


def to_json_dict(resource: Resource) -> dict[str, Any]:
    """The resource as FHIR JSON (a plain dict, empty elements left out)."""
    return resource.model_dump(mode="json", exclude_none=True, by_alias=True)


def build(model: type[R], **fields: Any) -> R:
    """Construct a FHIR model from plain FHIR-JSON-shaped values (dicts for datatypes, ISO strings for times).

    The models coerce and validate these at run time; going through `model_validate` keeps the
    call sites readable and honest to type checkers.
    """
    return model.model_validate({k: v for k, v in fields.items() if v is not None})
