"""Replies to senders: OperationOutcome from problems, the BaRS response message, the batch-response.

BaRS error codes: https://fhir.nhs.uk/Codesystem/http-error-codes (lower-case "system",
as in NHS England's examples; shared/research/bars-examples/OperationOutcome/).
"""

from __future__ import annotations

from typing import Any

from adapters.problems import Problem
from common import codes
from fhir_mapping.bundles import bundle_of, entry_full_url
from fhir_mapping.fhir import Bundle, MessageHeader, OperationOutcome, build, checking, to_json_dict
from fhir_mapping.ids import resource_id

__all__ = ["operation_outcome", "bars_response_message", "batch_response", "HTTP_ERROR_CODES", "server_error_outcome"]

HTTP_ERROR_CODES = "https://fhir.nhs.uk/Codesystem/http-error-codes"
BARS_EVENTS = "https://fhir.nhs.uk/CodeSystem/message-events-bars"


def operation_outcome(problems: list[Problem], outcome_id: str | None = None) -> dict[str, Any]:
    """One OperationOutcome issue per problem: severity, FHIR issue code, BaRS error code, element, diagnostics."""
    issues = []
    for problem in problems:
        issue: dict[str, Any] = {
            "severity": problem.severity,
            "code": problem.kind.issue_code,
            "details": {"coding": [{"system": HTTP_ERROR_CODES, "code": problem.kind.error_code}]},
            "diagnostics": problem.message,
        }
        if problem.element:
            issue["expression"] = [problem.element]
        issues.append(issue)
    if not issues:
        issues = [{"severity": "information", "code": "informational", "diagnostics": "no problems"}]
    outcome = build(
        OperationOutcome,
        id=outcome_id,
        meta={"profile": [f"{codes.UKCORE}OperationOutcome"]},
        issue=issues,
    )
    return to_json_dict(outcome)


def server_error_outcome(reference: str) -> dict[str, Any]:
    """A 500 reply that says nothing of the input (no patient data), with a reference for the logs."""
    return {
        "resourceType": "OperationOutcome",
        "meta": {"profile": [f"{codes.UKCORE}OperationOutcome"]},
        "issue": [
            {
                "severity": "error",
                "code": "exception",
                "details": {"coding": [{"system": HTTP_ERROR_CODES, "code": "REC_SERVER_ERROR"}]},
                "diagnostics": f"internal error; nothing was stored; quote reference {reference}",
            }
        ],
    }


def bars_response_message(
    *,
    request_id: str,
    original_bundle_id: str,
    our_endpoint: str,
    reply_to: str | None,
    stored: list[dict[str, Any]],
    focus: dict[str, Any],
    warnings: list[Problem],
    timestamp: str,
) -> dict[str, Any]:
    """The synchronous BaRS reply: a `servicerequest-response` message acknowledging the referral.

    MessageHeader.response.identifier = the sender's Bundle.id, code `ok`; focus = our
    ServiceRequest; warnings (accepted defects) ride in MessageHeader.response.details.
    """
    header_id = resource_id("MessageHeader", "bars-response", request_id)
    outcome = operation_outcome(warnings, resource_id("OperationOutcome", "bars-response", request_id)) if warnings else None
    response: dict[str, Any] = {"identifier": original_bundle_id, "code": "ok"}
    if outcome:
        response["details"] = {"reference": f"OperationOutcome/{outcome['id']}"}
    header = build(
        MessageHeader,
        id=header_id,
        eventCoding={"system": BARS_EVENTS, "code": "servicerequest-response"},
        destination=[{"endpoint": reply_to}] if reply_to else None,
        source={"name": "IAP gateway", "software": "iap-gateway", "endpoint": our_endpoint},
        response=response,
        focus=[{"reference": f"{focus['resourceType']}/{focus['id']}"}],
    )
    resources = [to_json_dict(header), *stored, *([outcome] if outcome else [])]
    return _checked(bundle_of(resources, "message", resource_id("Bundle", "bars-response", request_id), timestamp))


def batch_response(stored: list[dict[str, Any]], created: set[str], warnings: list[Problem], bundle_id: str) -> dict[str, Any]:
    """Reply to a flat ingest: one entry per stored resource (the Task first) with status and location."""
    entries = []
    for index, resource in enumerate(stored):
        key = f"{resource['resourceType']}/{resource['id']}"
        entry_response: dict[str, Any] = {
            "status": "201 Created" if key in created else "200 OK",
            "location": f"{key}/_history/{resource['meta']['versionId']}",
        }
        if index == 0 and warnings:
            entry_response["outcome"] = operation_outcome(warnings)
        entries.append({"fullUrl": entry_full_url(resource), "resource": resource, "response": entry_response})
    return _checked({"resourceType": "Bundle", "id": bundle_id, "type": "batch-response", "entry": entries})


def _checked(bundle: dict[str, Any]) -> dict[str, Any]:
    """Our own reply must be a valid Bundle. Its parts are built (`build`, checked) or stored resources, so the
    whole-Bundle validation (~1 ms, as long as the mapping itself) runs in check mode, i.e. in every test."""
    if checking():
        Bundle.model_validate(bundle)
    return bundle
