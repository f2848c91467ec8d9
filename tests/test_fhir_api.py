"""The FHIR read API and the CAS queue as a client sees them."""

from __future__ import annotations

from datetime import timedelta

from tests.conftest import NOW, bars_headers, fixture_bytes, issues, task_of

FLAT = [
    "option2-standard.case.json",  # breach 15:15 (BNSSG)
    "option2-red-flag.case.json",  # breach 16:05 (BNSSG), Urgent CN Review
    "third-party-bsw.case.json",  # breach 17:40 (BSW)
    "option1-dx12.case.json",  # breach 14:30 (BNSSG)
]


def _load(client) -> dict[str, str]:  # type: ignore[no-untyped-def]
    ids = {}
    for name in FLAT:
        response = client.post("/ingest/nhs111", content=fixture_bytes(name))
        assert response.status_code == 201
        ids[name] = task_of(response.json())["id"]
    reply = client.post("/fhir/$process-message", content=fixture_bytes("bars-dx335-immediate.bundle.json"), headers=bars_headers())
    ids["bars"] = task_of(reply.json())["id"]  # breach 15:50 (BNSSG)
    return ids


def test_queue_is_in_breach_order_with_breached_cases_first_CAS_02(client, clock) -> None:
    """CAS-02: queue is in breach order with breached cases first."""
    ids = _load(client)
    clock.set(NOW + timedelta(hours=3))  # 15:00: only the Dx12 case (14:30) has breached
    body = client.get("/queue").json()
    order = [entry["task"] for entry in body["entries"]]
    assert order == [
        f"Task/{ids[n]}"
        for n in ("option1-dx12.case.json", "option2-standard.case.json", "bars", "option2-red-flag.case.json", "third-party-bsw.case.json")
    ]
    first, second = body["entries"][0], body["entries"][1]
    assert first["breached"] is True and first["time_to_breach"] == "-PT30M" and first["time_to_breach_seconds"] == -1800
    assert second["breached"] is False and second["time_to_breach"] == "PT15M"
    assert body["entries"][3]["classification"] == "Urgent CN Review"


def test_queue_can_be_read_per_service_CAS_01(client) -> None:
    """CAS-01: queue can be read per service."""
    ids = _load(client)
    bsw = client.get("/queue", params={"service": "bsw"}).json()
    assert [e["task"] for e in bsw["entries"]] == [f"Task/{ids['third-party-bsw.case.json']}"]
    assert client.get("/queue", params={"service": "bnssg"}).json()["count"] == 4
    unknown = client.get("/queue", params={"service": "nowhere"})
    assert unknown.status_code == 400 and issues(unknown.json())[0][1] == "service"


def test_task_search_by_status_business_status_priority_and_patient(client) -> None:
    ids = _load(client)
    red = client.get("/fhir/Task", params={"business-status": "urgent-cn-review"}).json()
    assert red["type"] == "searchset" and red["total"] == 1
    assert red["entry"][0]["resource"]["id"] == ids["option2-red-flag.case.json"]
    assert client.get("/fhir/Task", params={"status": "ready"}).json()["total"] == 5
    assert client.get("/fhir/Task", params={"status": "completed"}).json()["total"] == 0
    assert client.get("/fhir/Task", params={"priority": "stat"}).json()["total"] == 1
    task = client.get(f"/fhir/Task/{ids['option1-dx12.case.json']}").json()
    by_patient = client.get("/fhir/Task", params={"patient": task["for"]["reference"]}).json()
    assert [e["resource"]["id"] for e in by_patient["entry"]] == [task["id"]]


def test_task_search_pages_with_next_and_previous_links(client) -> None:
    _load(client)
    page1 = client.get("/fhir/Task", params={"_count": 2, "_sort": "breach-time"}).json()
    assert page1["total"] == 5 and len(page1["entry"]) == 2
    links = {link["relation"]: link["url"] for link in page1["link"]}
    assert "previous" not in links
    page2 = client.get(links["next"]).json()
    page3 = client.get({link["relation"]: link["url"] for link in page2["link"]}["next"]).json()
    assert len(page3["entry"]) == 1 and "next" not in {link["relation"] for link in page3["link"]}
    seen = [e["resource"]["id"] for p in (page1, page2, page3) for e in p["entry"]]
    assert len(set(seen)) == 5
    ends = [e["resource"]["restriction"]["period"]["end"] for p in (page1, page2, page3) for e in p["entry"]]
    assert ends == sorted(ends)


def test_task_search_sorts_descending(client) -> None:
    _load(client)
    body = client.get("/fhir/Task", params={"_sort": "-breach-time"}).json()
    ends = [e["resource"]["restriction"]["period"]["end"] for e in body["entry"]]
    assert ends == sorted(ends, reverse=True)


def test_unsupported_search_parameters_are_refused_by_name(client) -> None:
    response = client.get("/fhir/Task", params={"owner": "x"})
    assert response.status_code == 400 and issues(response.json())[0][1] == "owner"
    bad_sort = client.get("/fhir/Task", params={"_sort": "colour"})
    assert bad_sort.status_code == 422 and issues(bad_sort.json())[0][1] == "_sort"
    bad_count = client.get("/fhir/Task", params={"_count": "-1"})
    assert bad_count.status_code == 400 and issues(bad_count.json())[0][1] == "_count"


def test_patient_search_by_nhs_number(client) -> None:
    _load(client)
    body = client.get("/fhir/Patient", params={"identifier": "https://fhir.nhs.uk/Id/nhs-number|9990000042"}).json()
    assert body["total"] == 1
    patient = body["entry"][0]["resource"]
    assert patient["identifier"] == [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9990000042"}]
    assert patient["meta"]["versionId"] == "1" and patient["meta"]["lastUpdated"] == "2026-11-23T12:00:00Z"
    assert client.get("/fhir/Patient", params={"identifier": "https://fhir.nhs.uk/Id/nhs-number|9990000107"}).json()["total"] == 0
    assert client.get("/fhir/Patient").status_code == 400


def test_read_of_unknown_resource_is_404_operation_outcome(client) -> None:
    response = client.get("/fhir/Task/00000000-0000-0000-0000-000000000000")
    assert response.status_code == 404
    assert response.json()["issue"][0]["code"] == "not-found"
    assert client.get("/fhir/Medication/x").status_code == 404
    assert client.get("/no/such/path").json()["resourceType"] == "OperationOutcome"


def test_read_returns_version_and_etag(client) -> None:
    ids = _load(client)
    response = client.get(f"/fhir/Task/{ids['bars']}")
    assert response.headers["etag"] == 'W/"1"'
    assert response.headers["content-type"].startswith("application/fhir+json")
