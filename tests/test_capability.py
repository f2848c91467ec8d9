"""The CapabilityStatement lists exactly what is served: compared with the app's routes, and every interaction,
search parameter and operation it lists tried over HTTP. A route added under /fhir without its line in the
statement fails here."""

from __future__ import annotations

import re
from typing import Any

from fastapi.routing import APIRoute

from gateway.api.fhir_types import READABLE_TYPES, VERSIONED_TYPES
from gateway.api.search_params import GENERIC_TYPES

PROBES = {"date": "ge2026-01-01", "_lastUpdated": "ge2026-01-01", "patient": "Patient/x", "_count": "1", "_offset": "0"}
PROBES |= {"_summary": "count", "_format": "json", "_id": "x"}


def _statement(client) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:  # type: ignore[no-untyped-def]
    statement = client.get("/fhir/metadata").json()
    assert statement["resourceType"] == "CapabilityStatement" and statement["fhirVersion"] == "4.0.1"
    return statement["rest"][0], {r["type"]: r for r in statement["rest"][0]["resource"]}


def _interactions(entry: dict[str, Any] | None) -> set[str]:
    return {i["code"] for i in (entry or {}).get("interaction", [])}


def _uncovered(route: APIRoute, method: str, rest: dict[str, Any], resources: dict[str, dict[str, Any]]) -> str | None:
    """Why `method route.path` is not in the statement (None: it is)."""
    path = route.path
    operation = re.fullmatch(r"/fhir(?:/([A-Za-z]+))?(?:/\{[a-z_]+\})?/\$([a-z-]+)", path)
    if operation:
        rtype, name = operation.groups()
        listed = rest.get("operation", []) if rtype is None else resources.get(rtype, {}).get("operation", [])
        return None if any(o["name"] == name for o in listed) else f"${name} on {rtype or 'the system'}"
    generic_operation = re.fullmatch(r"/fhir/([A-Za-z]+)/\{[a-z_]+\}/\{operation\}", path)
    if generic_operation:
        return None if resources.get(generic_operation.group(1), {}).get("operation") else f"operations on {generic_operation.group(1)}"
    if path == "/fhir/metadata" and method == "GET":
        return None
    if path == "/fhir/{resource_type}" and method == "GET":  # the generic search
        missing = [t for t in GENERIC_TYPES if "search-type" not in _interactions(resources.get(t))]
        return f"search on {missing}" if missing else None
    if path == "/fhir/{resource_type}/{resource_id}" and method == "GET":  # the generic read
        missing = [t for t in READABLE_TYPES if "read" not in _interactions(resources.get(t))]
        return f"read of {missing}" if missing else None
    if path.startswith("/fhir/{resource_type}/{resource_id}/_history") and method == "GET":
        wanted = "vread" if path.endswith("{version_id}") else "history-instance"
        missing = [t for t in VERSIONED_TYPES if wanted not in _interactions(resources.get(t))]
        return f"{wanted} of {missing}" if missing or not VERSIONED_TYPES else None
    literal = re.fullmatch(r"/fhir/([A-Za-z]+)(/\{[a-z_]+\})?", path)
    if literal:
        rtype, instance = literal.groups()
        wanted_literal = {("GET", False): "search-type", ("GET", True): "read", ("POST", False): "create"}.get((method, bool(instance)))
        return None if wanted_literal in _interactions(resources.get(rtype)) else f"{wanted_literal} on {rtype}"
    return "a route the statement has no line for"


def test_every_route_under_fhir_is_in_the_capability_statement(client) -> None:
    rest, resources = _statement(client)
    uncovered = []
    for route in client.app.routes:
        if not isinstance(route, APIRoute) or not route.path.startswith("/fhir") or not route.include_in_schema:
            continue  # routes out of the schema only refuse (405 for free edits of a case, CAS-08)
        for method in sorted((route.methods or set()) - {"HEAD"}):
            reason = _uncovered(route, method, rest, resources)
            if reason:
                uncovered.append(f"{method} {route.path}: {reason}")
    assert uncovered == []


def test_every_interaction_in_the_capability_statement_is_served(client) -> None:
    rest, resources = _statement(client)
    assert "EpisodeOfCare" in resources and rest["security"]["service"][0]["coding"][0]["code"] == "OAuth"
    assert rest["operation"] == [
        {"name": "process-message", "definition": "http://hl7.org/fhir/OperationDefinition/MessageHeader-process-message"}
    ]
    for rtype, entry in resources.items():
        interactions = _interactions(entry)
        if "read" in interactions:
            reply = client.get(f"/fhir/{rtype}/no-such-id")
            assert reply.status_code == 404 and "is not known" in reply.text, (rtype, reply.text)
        if "search-type" in interactions:
            params = {p["name"]: p for p in entry["searchParam"]}
            assert {"_id", "_lastUpdated", "_count", "_offset", "_summary"} <= set(params), rtype
            for name, param in params.items():
                value = param["documentation"].removeprefix("one of ").split(", ")[-1] if name == "_sort" else PROBES.get(name, "x")
                reply = client.get(f"/fhir/{rtype}", params={name: value} | ({} if name == "_id" else {"_id": "x"}))
                assert reply.status_code == 200, (rtype, name, reply.text)
            for include in entry.get("searchInclude", []):
                assert client.get(f"/fhir/{rtype}", params={"_include": include}).status_code == 200, (rtype, include)
            for include in entry.get("searchRevInclude", []):
                assert client.get(f"/fhir/{rtype}", params={"_revinclude": include}).status_code == 200, (rtype, include)
            assert client.get(f"/fhir/{rtype}", params={"no-such-parameter": "x"}).status_code == 400, rtype
        else:
            assert client.get(f"/fhir/{rtype}").status_code == 404, rtype


def test_every_operation_has_its_operation_definition_and_is_served(client) -> None:
    _, resources = _statement(client)
    operations = [(rtype, op) for rtype, entry in resources.items() for op in entry.get("operation", [])]
    assert {(rtype, op["name"]) for rtype, op in operations} >= {
        ("Patient", "outcome-summary"),
        ("Task", "explain"),
        ("Task", "cn-review"),
        ("ServiceRequest", "route"),
        ("EpisodeOfCare", "allocate"),
    }
    for rtype, op in operations:
        definition_id = op["definition"].rsplit("/", 1)[1]
        definition = client.get(f"/fhir/OperationDefinition/{definition_id}")
        assert definition.status_code == 200, op
        body = definition.json()
        assert body["url"] == op["definition"] and body["code"] == op["name"] and body["resource"] == [rtype]
        path = f"/fhir/{rtype}/no-such-id/${op['name']}" if body["instance"] else f"/fhir/{rtype}/${op['name']}"
        method = "POST" if body["affectsState"] else "GET"
        reply = client.request(method, path, content=b'{"resourceType": "Parameters"}')
        assert reply.status_code not in (405, 500), (method, path, reply.text)
        assert "unknown operation" not in reply.text.lower() and "not served" not in reply.text, (method, path, reply.text)
    assert client.get("/fhir/OperationDefinition/Task-no-such-operation").status_code == 404
