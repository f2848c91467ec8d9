"""Synthetic pathway referrals: the demo wait list (`serve --demo`, `iap-gateway report waitlist --demo`) and test inputs.

Everything here is synthetic: NHS numbers are from the 999 test range with a valid check digit,
names say "Synthetic". The demo sends every referral and contact through the same service layer
as HTTP, with the clock set to each event's time, so clocks, Tasks and Provenance are real.
"""

from __future__ import annotations

import json
import random
from datetime import date, datetime, timedelta
from typing import Any

from common.datetimes import to_fhir_instant
from gateway.platform.clock import FixedClock

__all__ = ["referral", "phq9", "gad7", "synthetic_nhs_number", "load_demo_waitlist", "contact"]

GATEWAY = "https://fhir.iap-gateway.org"
_FREQUENCY = ("LA6568-5", "LA6569-3", "LA6570-1", "LA6571-9")
_PHQ9 = ("44250-9", "44255-8", "44259-0", "44254-1", "44251-7", "44258-2", "44252-5", "44253-3", "44260-8")
_GAD7 = ("69725-0", "68509-9", "69733-4", "69734-2", "69735-9", "69689-8", "69736-7")


def synthetic_nhs_number(n: int) -> str:
    """The n-th NHS number of the 999 test range with a valid modulus 11 check digit."""
    while True:
        body = f"999{n:06d}"
        total = sum(int(d) * w for d, w in zip(body, range(10, 1, -1), strict=True))
        check = 11 - total % 11
        if check == 11:
            return body + "0"
        if check != 10:
            return body + str(check)
        n += 1


def _response(questionnaire: str, link_ids: tuple[str, ...], scores: list[int], authored: str, local_id: str) -> dict[str, Any]:
    return {
        "resourceType": "QuestionnaireResponse",
        "id": local_id,
        "status": "completed",
        "questionnaire": questionnaire,
        "authored": authored,
        "item": [
            {"linkId": link, "answer": [{"valueCoding": {"system": "http://loinc.org", "code": _FREQUENCY[s]}}]}
            for link, s in zip(link_ids, scores, strict=True)
        ],
    }


def phq9(total: int, item9: int = 0, authored: str = "2026-11-02T09:00:00+00:00") -> dict[str, Any]:
    """A PHQ-9 with this total (items filled from the first), item 9 as given."""
    scores = _spread(total - item9, 8) + [item9]
    return _response(f"{GATEWAY}/Questionnaire/phq-9", _PHQ9, scores, authored, "phq9")


def gad7(total: int, authored: str = "2026-11-02T09:00:00+00:00") -> dict[str, Any]:
    return _response(f"{GATEWAY}/Questionnaire/gad-7", _GAD7, _spread(total, 7), authored, "gad7")


def wsas(total: int, authored: str = "2026-11-02T09:00:00+00:00") -> dict[str, Any]:
    """A WSAS (5 items, 0-8 each) with this total, items filled from the first."""
    scores = [min(8, max(0, total - 8 * i)) for i in range(5)]
    if not 0 <= total <= 40:
        raise ValueError(f"WSAS total {total} out of range")
    links = ("wsas-work", "wsas-home-management", "wsas-social-leisure", "wsas-private-leisure", "wsas-relationships")
    return {
        "resourceType": "QuestionnaireResponse",
        "id": "wsas",
        "status": "completed",
        "questionnaire": f"{GATEWAY}/Questionnaire/wsas",
        "authored": authored,
        "item": [
            {"linkId": link, "answer": [{"valueCoding": {"system": f"{GATEWAY}/CodeSystem/wsas-answers", "code": str(s)}}]}
            for link, s in zip(links, scores, strict=True)
        ],
    }


def _spread(total: int, items: int) -> list[int]:
    if not 0 <= total <= 3 * items:
        raise ValueError(f"total {total} out of range for {items} items")
    return [min(3, max(0, total - 3 * i)) for i in range(items)]


def referral(
    service: str,
    ref: str,
    received: str,
    birth_date: str,
    *,
    nhs_number: str = "9990000174",
    source: str = "gp",
    step: str | None = None,
    findings: tuple[str, ...] = (),
    priority: str = "routine",
    practice: str | None = "C87001",
    gp_contact_agreed: bool | None = None,
    copy_to_patient: bool | None = None,
    responses: tuple[dict[str, Any], ...] = (),
    care_plans: tuple[str, ...] = (),
    requester: str | None = "Dr Synthetic Referrer",
    functioning: str | None = None,
    risk: str | None = None,
) -> dict[str, Any]:
    """A pathway referral ServiceRequest in the shape docs/formats/pathway-referral.md describes."""
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "id": "patient",
        "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs_number}],
        "name": [{"family": "Synthetic", "given": ["Pathway"]}],
        "birthDate": birth_date,
    }
    if practice:
        patient["generalPractitioner"] = [{"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": practice}}]
    extension = []
    if gp_contact_agreed is not None:
        extension.append({"url": f"{GATEWAY}/StructureDefinition/gp-contact-agreed", "valueBoolean": gp_contact_agreed})
    if copy_to_patient is not None:
        extension.append({"url": f"{GATEWAY}/StructureDefinition/letter-copy-to-patient", "valueBoolean": copy_to_patient})
    if functioning is not None:  # TT-07: the referral's own statement of functioning
        extension.append({"url": f"{GATEWAY}/StructureDefinition/referral-functioning", "valueCode": functioning})
    if risk is not None:  # TT-07: the referral's own statement of risk
        extension.append({"url": f"{GATEWAY}/StructureDefinition/referral-risk", "valueCode": risk})
    body: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "contained": [patient, *responses],
        "identifier": [{"system": "https://referrals.example.nhs.uk/id", "value": ref}],
        "status": "active",
        "intent": "order",
        "priority": priority,
        "category": [{"coding": [{"system": f"{GATEWAY}/CodeSystem/referral-source", "code": source}]}],
        "subject": {"reference": "#patient"},
        "authoredOn": received,
        "performer": [{"identifier": {"system": f"{GATEWAY}/Id/pathway-service", "value": service}}],
    }
    if extension:
        body["extension"] = extension
    if step:
        body["code"] = {"coding": [{"system": f"{GATEWAY}/CodeSystem/pathway-step", "code": step}]}
    if findings:
        body["reasonCode"] = [{"coding": [{"system": f"{GATEWAY}/CodeSystem/referral-finding", "code": f}]} for f in findings]
    info = [{"reference": f"#{r['id']}"} for r in responses] + [{"reference": f"CarePlan/{c}"} for c in care_plans]
    if info:
        body["supportingInfo"] = info
    if requester:
        body["requester"] = {"display": requester}
    return body


def contact(kind: str, outcome: str = "attended", date_: str | None = None, **extra: Any) -> dict[str, Any]:
    """A $record-contact Parameters body."""
    params: list[dict[str, Any]] = [{"name": "kind", "valueCode": kind}, {"name": "outcome", "valueCode": outcome}]
    if date_:
        params.append({"name": "date", "valueDateTime": date_})
    for name, value in extra.items():
        key = "valueBoolean" if isinstance(value, bool) else "valueString"
        params.append({"name": name.replace("_", "-"), key: value})
    return {"resourceType": "Parameters", "parameter": params}


_TEAMS = ("north-essex-west", "north-essex-mid", "north-essex-north-east")
_THERAPISTS = {"step-2": ("PWP Synthetic One", "PWP Synthetic Two"), "step-3": ("HIT Synthetic Three", "HIT Synthetic Four")}
_INTERVENTIONS = {"step-2": ("guided self-help", "cCBT", "psychoeducation group"), "step-3": ("CBT", "IPT", "counselling for depression")}


def load_demo_waitlist(app_state: Any, now: datetime, count: int = 60, seed: int = 2026) -> int:
    """A deterministic demo wait list of `count` Talking Therapies referrals over the last ~15 weeks; returns how many were new."""
    from gateway.pathways.service import Pathways

    rng = random.Random(seed)
    clock = FixedClock(now)
    pathways = Pathways(app_state.sessions, app_state.pathway_rules, app_state.measures, clock)
    new = 0
    for i in range(count):
        service = _TEAMS[i % 3]
        received = now - timedelta(days=rng.randint(1, 105), hours=rng.randint(0, 8))
        phq, gad = rng.choice(((7, 6), (12, 9), (16, 11), (11, 13), (8, 5), (17, 15)))
        born = date(1960 + rng.randint(0, 45), rng.randint(1, 12), rng.randint(1, 28)).isoformat()
        body = referral(
            service,
            f"demo-tt-{i:03d}",
            to_fhir_instant(received),
            born,
            nhs_number=synthetic_nhs_number(500 + i),
            source=rng.choice(("self", "gp")),
            gp_contact_agreed=True,
            practice=None,
            requester=None,
            responses=(phq9(phq, authored=to_fhir_instant(received)), gad7(gad, authored=to_fhir_instant(received))),
        )
        if body["category"][0]["coding"][0]["code"] == "gp":
            body.pop("extension")
        clock.set(received)
        reply = pathways.refer(json.dumps(body).encode())
        new += 0 if reply.duplicate else 1
        episode = next((p["valueReference"]["reference"] for p in reply.body["parameter"] if p["name"] == "episode"), None)
        if episode is None or reply.duplicate:
            continue
        episode_id = episode.split("/", 1)[1]
        step = next(p["valueCode"] for p in reply.body["parameter"] if p["name"] == "step")
        allocated = received + timedelta(days=rng.randint(2, 10))
        if allocated < now and step in _INTERVENTIONS:
            clock.set(allocated)
            params = {
                "resourceType": "Parameters",
                "parameter": [
                    {"name": "practitioner", "valueString": rng.choice(_THERAPISTS[step])},
                    {"name": "intervention", "valueString": rng.choice(_INTERVENTIONS[step])},
                ],
            }
            pathways.operate(episode_id, "allocate", json.dumps(params).encode())
        assessed = received + timedelta(days=rng.randint(10, 60))
        if assessed < now and rng.random() < 0.6:
            clock.set(assessed)
            pathways.operate(episode_id, "record-contact", json.dumps(contact("assessment")).encode())
            treated = assessed + timedelta(days=rng.randint(7, 70))
            if treated < now and rng.random() < 0.5:
                clock.set(treated)
                pathways.operate(episode_id, "record-contact", json.dumps(contact("treatment")).encode())
    return new
