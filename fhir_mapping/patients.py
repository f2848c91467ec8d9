"""The Patient every source maps to: one per NHS number (deterministic id), UK Core identifiers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from adapters.referral import Demographics
from common import codes
from fhir_mapping.fhir import Built, Patient, build
from fhir_mapping.ids import resource_id

__all__ = ["patient_resource", "merge_patient"]


def patient_resource(
    demo: Demographics,
    gp_practice_ods: str | None,
    *,
    patient_id: str | None = None,
    identifiers: Sequence[dict[str, Any]] = (),
) -> Built[Patient]:
    """UK Core Patient from demographics; its id comes from the NHS number, so every source maps to one patient.

    An HL7 v2 sender may give more (gateway.epr.hl7_patients): `identifiers` (the NHS number with its verification
    status, local numbers) and `patient_id` (the id the patient already has, or one minted from a local number).
    """
    name: dict[str, Any] = {"use": "official"}
    if demo.family:
        name["family"] = demo.family
    if demo.given:
        name["given"] = list(demo.given)
    if demo.prefix:
        name["prefix"] = list(demo.prefix)
    address: dict[str, Any] = {"use": "home"}
    if demo.address_lines:
        address["line"] = list(demo.address_lines)
    if demo.city:
        address["city"] = demo.city
    if demo.postcode:
        address["postalCode"] = demo.postcode
    return build(
        Patient,
        meta={"profile": [f"{codes.UKCORE}Patient"]},
        id=patient_id or resource_id("Patient", codes.NHS_NUMBER, demo.nhs_number),
        identifier=list(identifiers) or [{"system": codes.NHS_NUMBER, "value": demo.nhs_number}],
        name=[name] if len(name) > 1 else None,
        gender=demo.gender,
        birthDate=demo.birth_date.isoformat() if demo.birth_date else None,
        address=[address] if len(address) > 1 else None,
        telecom=[{"system": "phone", "value": demo.phone, "use": "home"}] if demo.phone else None,
        generalPractitioner=([{"identifier": {"system": codes.ODS_ORG, "value": gp_practice_ods}}] if gp_practice_ods else None),
    )


def merge_patient(stored: dict[str, Any] | None, update: dict[str, Any]) -> dict[str, Any]:
    """An update (e.g. ADT^A08/A31) over what is stored: elements it sends replace ours; those it omits are kept.

    Identifiers are kept per system: one the update sends replaces ours of that system (a verification status
    it does not send is kept for the same number), and ours of other systems stay (a local number, an NHS number).
    """
    if stored is None:
        return update
    merged = {k: v for k, v in stored.items() if k != "meta"}
    merged.update({k: v for k, v in update.items() if k not in ("meta", "id", "resourceType", "identifier") and v})
    merged["identifier"] = _merge_identifiers(stored.get("identifier") or [], update.get("identifier") or [])
    if not merged["identifier"]:
        del merged["identifier"]
    return merged


def _merge_identifiers(stored: list[dict[str, Any]], update: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ours = {i.get("system"): i for i in stored}
    out = []
    for identifier in update:
        before = ours.get(identifier.get("system"))
        if before and before.get("value") == identifier.get("value") and "extension" in before and "extension" not in identifier:
            identifier = {**identifier, "extension": before["extension"]}
        out.append(identifier)
    sent = {i.get("system") for i in update}
    return out + [i for i in stored if i.get("system") not in sent]
