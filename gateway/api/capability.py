"""The CapabilityStatement and the OperationDefinitions it points to, written from the same tables the routes
serve (search_params.SEARCHES, the operation registries), so what is advertised is what is served
(tests/test_capability.py compares it with the routes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from adapters.problems import GatewayInputError, Kind, Problem
from fhir_mapping.fhir import CapabilityStatement, build, to_json_dict
from gateway.api.fhir_types import READABLE_TYPES, VERSIONED_TYPES
from gateway.api.responses import FhirResponse
from gateway.api.search_params import SEARCHES
from gateway.cas.rules.ops import OPERATIONS
from gateway.pathways.rules.steps import EPISODE_OPERATIONS

__all__ = ["router", "capability_statement", "OPERATION_DEFINITIONS", "SERVED_OPERATIONS", "CREATABLE_TYPES"]

router = APIRouter(prefix="/fhir/OperationDefinition")

CANONICAL = "https://fhir.iap-gateway.org/OperationDefinition/"
CREATABLE_TYPES = ("QuestionnaireResponse", "CommunicationRequest")


@dataclass(frozen=True)
class ServedOperation:
    """One `$operation` route: on which type (None: the whole system), on an instance or the type, GET or POST."""

    resource: str | None
    code: str
    instance: bool
    method: str
    description: str

    @property
    def id(self) -> str:
        return f"{self.resource or 'system'}-{self.code}"

    @property
    def path(self) -> str:
        return "/fhir" + (f"/{self.resource}" if self.resource else "") + ("/{id}" if self.instance else "") + f"/${self.code}"


SERVED_OPERATIONS: tuple[ServedOperation, ...] = (
    *(ServedOperation("Task", name, True, "POST", f"CAS case operation ${name} (Parameters in, the Task out)") for name in OPERATIONS),
    ServedOperation("Task", "explain", True, "GET", "Every decision on a CAS case in plain words: rule ids, inputs, who and when"),
    *(
        ServedOperation("EpisodeOfCare", name, True, "POST", f"Pathway episode operation ${name} (Parameters in, the episode out)")
        for name in EPISODE_OPERATIONS
    ),
    ServedOperation("EpisodeOfCare", "explain", True, "GET", "Every decision and clock event on an episode of care, in order"),
    ServedOperation("ServiceRequest", "route", False, "POST", "Route a referral to a primary care or Talking Therapies pathway"),
    ServedOperation("ServiceRequest", "explain", True, "GET", "Why a referral was routed as it was: rule ids, inputs, rule file version"),
    ServedOperation(
        "Patient", "outcome-summary", True, "GET", "Paired outcome measures as Parameters: first/latest, change, verdicts, TT-11"
    ),
)


def _definition(op: ServedOperation) -> dict[str, Any]:
    return {
        "resourceType": "OperationDefinition",
        "id": op.id,
        "url": CANONICAL + op.id,
        "name": "".join(part.capitalize() for part in op.id.replace("-", " ").split()),
        "status": "active",
        "kind": "operation",
        "description": op.description,
        "affectsState": op.method == "POST",
        "code": op.code,
        "resource": [op.resource] if op.resource else [],
        "system": op.resource is None,
        "type": not op.instance,
        "instance": op.instance,
    }


OPERATION_DEFINITIONS: dict[str, dict[str, Any]] = {
    op.id: {k: v for k, v in _definition(op).items() if v != []} for op in SERVED_OPERATIONS
}


@router.get("/{definition_id}", summary="The OperationDefinition of each $operation served (listed in /fhir/metadata)")
def operation_definition(definition_id: str) -> Response:
    definition = OPERATION_DEFINITIONS.get(definition_id)
    if definition is None:
        raise GatewayInputError(Problem(Kind.NOT_FOUND, "id", f"OperationDefinition/{definition_id[:64]} is not known"))
    return FhirResponse(definition)


def _resource(rtype: str) -> dict[str, Any]:
    interactions = []
    if rtype in READABLE_TYPES or rtype in ("Questionnaire", "AuditEvent", "OperationDefinition"):
        interactions.append("read")
    if rtype in VERSIONED_TYPES:
        interactions += ["vread", "history-instance"]
    if rtype in SEARCHES:
        interactions.append("search-type")
    if rtype in CREATABLE_TYPES:
        interactions.append("create")
    entry: dict[str, Any] = {"type": rtype, "interaction": [{"code": code} for code in interactions]}
    if rtype in VERSIONED_TYPES:
        entry["versioning"] = "versioned"
        entry["readHistory"] = True
    spec = SEARCHES.get(rtype)
    if spec is not None:
        if spec.note:
            entry["documentation"] = spec.note
        if spec.include:
            entry["searchInclude"] = list(spec.include)
        if spec.revinclude:
            entry["searchRevInclude"] = list(spec.revinclude)
        entry["searchParam"] = [
            {"name": name, "type": kind} | ({"documentation": "one of " + ", ".join(spec.sort)} if name == "_sort" else {})
            for name, kind in spec.all_params.items()
        ]
    operations = [op for op in SERVED_OPERATIONS if op.resource == rtype]
    if operations:
        entry["operation"] = [{"name": op.code, "definition": CANONICAL + op.id} for op in operations]
    return entry


def capability_statement(date: str) -> dict[str, Any]:
    """What this server supports, and nothing it does not."""
    types = sorted({*READABLE_TYPES, *SEARCHES, "Questionnaire", "AuditEvent", "OperationDefinition"})
    statement = build(
        CapabilityStatement,
        status="active",
        date=date,
        kind="instance",
        software={"name": "iap-gateway", "version": "0.1.0"},
        implementation={"description": "IAP gateway: NHS 111 referrals to the MHCAS CAS queue; outcome measures"},
        fhirVersion="4.0.1",
        format=["application/fhir+json", "json"],  # anything else asked for (Accept, _format) is answered 406
        rest=[
            {
                "mode": "server",
                "documentation": "Searches refuse a parameter they do not take (400) unless asked 'Prefer: handling=lenient'; "
                "POST [type]/_search (form-encoded) searches as GET does.",
                "resource": [_resource(rtype) for rtype in types],
                "security": {
                    "service": [
                        {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "OAuth"}]}
                    ],
                    "description": "Every request needs 'Authorization: Bearer <API key or access token>'; access tokens come from "
                    "POST /oauth2/token for a signed JWT client assertion (RS512, private_key_jwt). Scopes per route: docs/security.md.",
                },
                "operation": [
                    {"name": "process-message", "definition": "http://hl7.org/fhir/OperationDefinition/MessageHeader-process-message"}
                ],
            }
        ],
    )
    return to_json_dict(statement)
