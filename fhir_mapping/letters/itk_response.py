"""ITK3 responses (event ITK008M) as a GP system sends them back: infrastructure (2xxxx) and business (3xxxx)
acknowledgements, read by the outbox (gateway/letters/outbox/acks.py)."""

from __future__ import annotations

from typing import Any

from fhir.resources.STU3.bundle import Bundle as Stu3Bundle

from fhir_mapping.letters.itk3 import ITK_RESPONSE_CODES

__all__ = ["parse_itk_response"]


def parse_itk_response(body: bytes) -> tuple[str, str, str, str] | None:
    """An ITK3 response message (event ITK008M, XML or JSON) -> (acknowledged MessageHeader id, response code,
    ITK response code, text); None if it is not one."""
    try:
        text = body.decode("utf-8").lstrip()
        message = Stu3Bundle.model_validate_xml(body) if text.startswith("<") else Stu3Bundle.model_validate_json(body)
    except Exception:  # noqa: BLE001 - anything unreadable is simply not an ITK response
        return None
    entries: list[Any] = [e.resource for e in message.entry or [] if e.resource is not None]
    header = next((r for r in entries if r.get_resource_type() == "MessageHeader"), None)
    if header is None or header.response is None or header.event is None or header.event.code != "ITK008M":
        return None
    outcome = next((r for r in entries if r.get_resource_type() == "OperationOutcome"), None)
    itk_code, detail = "", ""
    for issue in (outcome.issue if outcome else None) or []:
        coding = next((c for c in ((issue.details.coding if issue.details else None) or []) if c.system == ITK_RESPONSE_CODES), None)
        if coding is not None:
            itk_code, detail = str(coding.code), str(coding.display or issue.diagnostics or "")
            break
    return str(header.response.identifier), str(header.response.code), itk_code, detail
