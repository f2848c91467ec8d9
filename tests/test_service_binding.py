"""Service binding on every read (issue 31, item 1): a client bound to a service sees only its service's data.

The binding is applied below the routes (gateway.platform.store.visibility), so the main test here walks every GET
route and every `$operation` the OpenAPI description lists, as a bound client, with the ids of another
service's resources: a route added later is walked without anyone remembering to add it.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from gateway.cas.rules.ops import OPERATIONS
from gateway.pathways.rules.steps import EPISODE_OPERATIONS
from gateway.platform.security.scopes import ADMIN, SCOPES
from gateway.platform.store.models import AuditEventRow, OutboxRow, ResourceRow
from tests.conftest import fixture_bytes, task_of
from tests.letter_helpers import completed_case
from tests.test_pathway_api import tt_episode

NHS_NUMBER = "https://fhir.nhs.uk/Id/nhs-number"
EVERY_SCOPE_BUT_ADMIN = frozenset(SCOPES) - {ADMIN}


def _rows(app: Any) -> list[ResourceRow]:
    with app.state.sessions() as session:
        rows = list(session.execute(select(ResourceRow)).scalars())
        session.expunge_all()
        return rows


def _patients_of(rows: list[ResourceRow], service: str) -> set[str]:
    return {r.subject_id for r in rows if r.service_id == service and r.subject_id}


@pytest.fixture
def loaded(app: Any, client: TestClient) -> dict[str, Any]:
    """Two CAS services' cases (bnssg's completed, with its GP letter queued), a bsw case, a Talking Therapies episode
    (north-essex-mid) and a measure: every kind of thing a service owns. Returns what the bsw client must never see."""
    bnssg_case = completed_case(client)  # bnssg: Task, Patient, ServiceRequest, ..., the CAS-13 letter and its deliveries
    bsw_case = task_of(client.post("/ingest/nhs111", content=fixture_bytes("third-party-bsw.case.json")).json())
    episode = tt_episode(client)  # north-essex-mid
    rows = _rows(app)
    by_ref = {f"{r.resource_type}/{r.id}": r for r in rows}
    bsw_patients = _patients_of(rows, "bsw")
    foreign_patients = (_patients_of(rows, "bnssg") | _patients_of(rows, "north-essex-mid")) - bsw_patients
    assert by_ref[f"Task/{bnssg_case['id']}"].service_id == "bnssg" and by_ref[f"EpisodeOfCare/{episode}"].service_id
    assert bsw_case["for"]["reference"].split("/")[1] in bsw_patients and len(foreign_patients) == 2
    foreign = [
        (r.resource_type, r.id)
        for r in rows
        if r.service_id in ("bnssg", "north-essex-mid")
        or r.subject_id in foreign_patients
        or (r.resource_type == "Patient" and r.id in foreign_patients)
    ]
    nhs_numbers = [i["value"] for t, rid in foreign if t == "Patient" for i in json.loads(by_ref[f"Patient/{rid}"].content)["identifier"]]
    with app.state.sessions() as session:
        deliveries = list(session.execute(select(OutboxRow.id)).scalars())
        events = list(session.execute(select(AuditEventRow.id)).scalars())  # all by the unbound client so far
    assert deliveries and events and nhs_numbers
    return {
        "foreign": foreign,
        "patients": sorted(foreign_patients),
        "markers": sorted({rid for _, rid in foreign} | set(nhs_numbers) | set(deliveries) | set(events)),
        "ids": sorted({rid for _, rid in foreign} | set(deliveries) | set(events)),
        "own_task": bsw_case["id"],
        "bnssg_task": bnssg_case["id"],
    }


def _leaks(response: Any, markers: list[str]) -> list[str]:
    """The markers a 2xx reply carries, leaving out its paging links (they echo the query that was asked)."""
    if response.status_code >= 300:
        return []
    text = response.text
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        text = json.dumps({k: v for k, v in body.items() if k != "link"})
    return [m for m in markers if m in text]


def _fill(template: str, names: list[str], foreign: list[tuple[str, str]], ids: list[str]) -> list[str]:
    """`template` with its path parameters set to another service's ids (a {resource_type} with the id's own type)."""
    if not names:
        return [template]
    if "resource_type" in names:
        return [template.replace("{resource_type}", t).replace(f"{{{names[-1]}}}", rid) for t, rid in foreign]
    filled = []
    for value in ids:
        path = template
        for name in names:
            path = path.replace(f"{{{name}}}", value)
        filled.append(path)
    return filled


def test_a_bound_client_reaches_no_other_services_resource_through_any_get_route_or_operation(app, client_with, loaded) -> None:
    """Every GET route of the OpenAPI description, and every `$operation`, with another service's ids: no 2xx carries them."""
    bsw = client_with(EVERY_SCOPE_BUT_ADMIN, service="bsw")
    paths = app.openapi()["paths"]
    # the audit trail first: later requests of this client are audited with the ids they asked for
    ordered = sorted(paths, key=lambda p: (not p.startswith("/fhir/AuditEvent"), "{" in p, p))
    leaks: list[str] = []
    walked = 0
    searches = [{}, {"patient": f"Patient/{loaded['patients'][0]}"}, {"patient": loaded["patients"][1]}]
    searches += [{"identifier": f"{NHS_NUMBER}|{m}"} for m in loaded["markers"] if re.fullmatch(r"999\d{7}", m)]
    for template in ordered:
        names = re.findall(r"\{([a-z_]+)\}", template)
        for method in paths[template]:
            if method == "get":
                for path in _fill(template, names, loaded["foreign"], loaded["ids"]):
                    for query in searches if not names else [{}]:
                        response = bsw.get(path, params=query)
                        walked += 1
                        assert response.status_code != 500, (path, response.text)
                        leaks += [f"GET {path}?{query}: {m}" for m in _leaks(response, loaded["markers"])]
            elif method == "post" and ("$" in template or "operation" in names):
                ops = sorted({*OPERATIONS, *EPISODE_OPERATIONS}) if "operation" in names else [""]
                for path in _fill(template, [n for n in names if n != "operation"], loaded["foreign"], loaded["ids"]):
                    for op in ops:
                        target = path.replace("{operation}", f"${op}")
                        response = bsw.post(target, content=b'{"resourceType": "Parameters"}')
                        walked += 1
                        assert response.status_code != 500, (target, response.text)
                        if response.status_code < 300:
                            leaks += [f"POST {target}: {response.status_code}"]
    assert walked > 500, "the walk must reach every route with every foreign id"
    assert leaks == []


def test_a_bound_client_reading_another_services_case_gets_404_and_its_patient_stays_hidden(client_with, loaded) -> None:
    """The reported leak: a fhir:read client bound to bsw read bnssg's Task, its Patient and every Task."""
    bsw = client_with({"fhir:read"}, service="bsw")
    patient = loaded["patients"]
    assert bsw.get(f"/fhir/Task/{loaded['bnssg_task']}").status_code == 404
    for patient_id in patient:
        assert bsw.get(f"/fhir/Patient/{patient_id}").status_code == 404
        assert "entry" not in bsw.get("/fhir/Task", params={"patient": patient_id}).json()
        assert bsw.get(f"/fhir/Patient/{patient_id}/$outcome-summary").status_code == 404
    tasks = bsw.get("/fhir/Task").json()
    assert [e["resource"]["id"] for e in tasks["entry"]] == [loaded["own_task"]] and tasks["total"] == 1
    own = bsw.get(f"/fhir/Task/{loaded['own_task']}")
    assert own.status_code == 200
    assert bsw.get(own.json()["for"]["reference"].replace("Patient/", "/fhir/Patient/")).status_code == 200


def test_a_bound_auditor_sees_only_the_audit_events_of_its_services_clients(client_with, loaded) -> None:
    first = client_with({"fhir:read"}, service="bsw")
    assert first.get(f"/fhir/Task/{loaded['own_task']}").status_code == 200
    auditor = client_with({"audit:read"}, service="bsw")
    events = auditor.get("/fhir/AuditEvent", params={"_count": "200"}).json()
    agents = {e["resource"]["agent"][0]["who"]["identifier"]["value"] for e in events.get("entry", [])}
    assert events["total"] >= 1 and len(agents) == 1  # the bsw reader's events; none of the unbound client's
    everything = client_with({"audit:read"})
    assert everything.get("/fhir/AuditEvent").json()["total"] > events["total"]


def test_an_unbound_client_still_sees_every_service(client, loaded) -> None:
    assert client.get(f"/fhir/Task/{loaded['bnssg_task']}").status_code == 200
    ids = {e["resource"]["id"] for e in client.get("/fhir/Task", params={"_count": "200"}).json()["entry"]}
    assert {loaded["bnssg_task"], loaded["own_task"]} <= ids
    for patient_id in loaded["patients"]:
        assert client.get(f"/fhir/Patient/{patient_id}").status_code == 200


def test_a_bound_operator_sees_every_step_of_its_case_in_explain_even_one_a_measure_caused_CAS_10(client, client_with) -> None:
    """A step recorded without a service (a measure sent by an unbound client escalating the case) belongs to the
    service of what it records: the bound operator's `$explain` shows it, as an unbound client's does."""
    task = task_of(client.post("/ingest/nhs111", content=fixture_bytes("option1-dx12.case.json")).json())
    qr = (fixture_bytes("../measures/phq-9-item9-risk.qr.json"), {"Content-Type": "application/fhir+json"})
    assert client.post("/fhir/QuestionnaireResponse", content=qr[0], headers=qr[1]).status_code == 201
    service = client.get(f"/export/cleo/{task['id']}").json()["service"]
    operator = client_with({"cas:operate"}, service=service)
    everything = client.get(f"/fhir/Task/{task['id']}/$explain").json()["parameter"]
    bound = operator.get(f"/fhir/Task/{task['id']}/$explain").json()["parameter"]
    assert len(everything) >= 3 and any("CAS-10" in p.get("valueString", "") for p in everything)
    assert bound == everything
