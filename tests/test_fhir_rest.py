"""The FHIR REST API as a FHIR client (HAPI's behaviour, the R4 http and search pages) expects it (issue 31, item 5)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fhir_mapping.parameters import from_parameters
from tests.conftest import fixture_bytes, issues, task_of
from tests.test_cas_operations import op
from tests.test_questionnaire_api import phq9

NHS_NUMBER = "https://fhir.nhs.uk/Id/nhs-number"


def _case(client, name: str = "option2-standard.case.json") -> dict[str, Any]:  # type: ignore[no-untyped-def]
    response = client.post("/ingest/nhs111", content=fixture_bytes(name))
    assert response.status_code == 201, response.text
    return task_of(response.json())


def _ids(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    return [f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


# -- every reply under /fhir is a FHIR resource, in the format asked for ------------------------------------------


def test_outcome_summary_is_a_parameters_resource(client) -> None:
    task = _case(client)
    reply = client.get(f"/fhir/{task['for']['reference']}/$outcome-summary")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("application/fhir+json")
    body = reply.json()
    assert body["resourceType"] == "Parameters"
    assert from_parameters(body)["patient"] == task["for"]["reference"]


@pytest.mark.parametrize(
    ("query", "headers", "element"),
    [
        ({}, {"Accept": "application/fhir+xml"}, "header:Accept"),
        ({}, {"Accept": "application/xml, text/xml;q=0.9"}, "header:Accept"),
        ({}, {"Accept": "application/fhir+json;q=0, application/fhir+xml"}, "header:Accept"),
        ({"_format": "xml"}, {}, "_format"),
        ({"_format": "application/fhir+xml"}, {}, "_format"),
        ({"_format": "xml"}, {"Accept": "application/fhir+json"}, "_format"),
    ],
)
def test_asking_for_xml_is_answered_406_with_an_operation_outcome(client, query, headers, element: str) -> None:
    task = _case(client)
    for path in (f"/fhir/Task/{task['id']}", "/fhir/Task", "/fhir/metadata", "/fhir/Nothing"):
        reply = client.get(path, params=query, headers=headers)
        assert reply.status_code == 406, (path, reply.text)
        assert reply.headers["content-type"].startswith("application/fhir+json")
        issue = reply.json()["issue"][0]
        assert issue["expression"] == [element] and issue["details"]["coding"][0]["code"] == "REC_NOT_ACCEPTABLE"


@pytest.mark.parametrize(
    ("query", "headers"),
    [
        ({}, {"Accept": "application/fhir+json"}),
        ({}, {"Accept": "application/json; fhirVersion=4.0"}),
        ({}, {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}),  # a browser
        ({"_format": "json"}, {}),
        ({"_format": "application/fhir+json"}, {"Accept": "application/*"}),
        ({}, {"Accept": "application/json+fhir"}),  # DSTU2's media type, still sent by older clients
    ],
)
def test_asking_for_json_in_any_spelling_is_answered(client, query, headers) -> None:
    task = _case(client)
    reply = client.get(f"/fhir/Task/{task['id']}", params=query, headers=headers)
    assert reply.status_code == 200 and reply.json()["id"] == task["id"]
    unescaped = client.get(f"/fhir/Task/{task['id']}?_format=application/fhir+json")  # the '+' arrives as a space
    assert unescaped.status_code == 200


def test_an_unknown_resource_type_is_404_for_read_and_search(client) -> None:
    for path in ("/fhir/Medication/x", "/fhir/Medication", "/fhir/task"):
        reply = client.get(path)
        assert reply.status_code == 404, (path, reply.text)
        assert issues(reply.json())[0][0] == "error" and reply.json()["issue"][0]["code"] == "not-found"


# -- unknown search parameters: strict (the default) or lenient ------------------------------------------------------


def test_an_unknown_search_parameter_is_refused_400_by_default_and_when_strict(client) -> None:
    for headers in ({}, {"Prefer": "handling=strict"}):
        reply = client.get("/fhir/Encounter", params={"colour": "red", "_count": "1"}, headers=headers)
        assert reply.status_code == 400 and issues(reply.json())[0][1] == "colour"


def test_an_unknown_search_parameter_is_ignored_with_a_warning_when_lenient(client) -> None:
    task = _case(client)
    reply = client.get("/fhir/Task", params={"colour": "red", "_id": task["id"]}, headers={"Prefer": "handling=lenient"})
    assert reply.status_code == 200, reply.text
    bundle = reply.json()
    assert _ids(bundle) == [f"Task/{task['id']}"]
    (outcome,) = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert issues(outcome) == [("warning", "colour", "search parameter 'colour' is not supported for Task: ignored")]
    assert all("colour" not in link["url"] for link in bundle["link"])  # the self link shows the search done


# -- every stored type is searchable; the common parameters everywhere -----------------------------------------------


def test_every_stored_type_a_case_writes_is_searchable_by_patient_and_id(client) -> None:
    task = _case(client)
    patient = task["for"]["reference"]
    reply = client.get(f"/fhir/Task/{task['id']}", params={})
    assert reply.status_code == 200
    found = set()
    for rtype in ("ServiceRequest", "Encounter", "Flag", "DocumentReference", "CarePlan", "Consent"):
        bundle = client.get(f"/fhir/{rtype}", params={"patient": patient}).json()
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset", bundle
        for rid in _ids(bundle):
            found.add(rid.split("/")[0])
            by_id = client.get(f"/fhir/{rtype}", params={"_id": rid.split("/")[1]}).json()
            assert _ids(by_id) == [rid]
    assert {"ServiceRequest", "Encounter"} <= found
    provenance = client.get("/fhir/Provenance", params={"target": f"Task/{task['id']}"}).json()
    assert provenance["total"] >= 1
    assert client.get("/fhir/Provenance", params={"target": "Task/nobody"}).json()["total"] == 0


def test_last_updated_count_summary_and_id_work_on_every_searchable_type(client, clock) -> None:
    task = _case(client)
    statement = client.get("/fhir/metadata").json()
    searchable = [r["type"] for r in statement["rest"][0]["resource"] if {"code": "search-type"} in r["interaction"]]
    assert {"Patient", "Questionnaire", "Encounter", "ServiceRequest", "Provenance", "AuditEvent"} <= set(searchable)
    for rtype in searchable:
        for params in ({"_count": "1", "_lastUpdated": "ge2000-01-01"}, {"_summary": "count", "_id": "x"}, {"_id": "a,b"}):
            reply = client.get(f"/fhir/{rtype}", params=params)
            assert reply.status_code == 200, (rtype, params, reply.text)
            bundle = reply.json()
            assert len(bundle.get("entry", [])) <= int(params.get("_count", 0) or 1)
    patients = client.get("/fhir/Patient", params={"_lastUpdated": "ge2000-01-01", "_count": "1"}).json()
    assert patients["total"] >= 1 and len(patients["entry"]) == 1
    assert client.get("/fhir/Patient", params={"_lastUpdated": "gt2030-01-01"}).json()["total"] == 0
    counted = client.get("/fhir/Task", params={"_summary": "count"}).json()
    assert counted["total"] == 1 and "entry" not in counted
    questionnaires = client.get("/fhir/Questionnaire", params={"_count": "2"}).json()
    assert questionnaires["total"] > 2 and len(questionnaires["entry"]) == 2
    assert any(link["relation"] == "next" for link in questionnaires["link"])
    phq = client.get("/fhir/Questionnaire", params={"_id": "phq-9"}).json()
    assert _ids(phq) == ["Questionnaire/phq-9"]
    assert _ids(client.get("/fhir/Task", params={"_id": f"{task['id']},other"}).json()) == [f"Task/{task['id']}"]


def test_last_updated_on_a_bare_date_means_that_whole_day(client) -> None:
    task = _case(client)  # stored at 12:00 on 23 November
    assert task["meta"]["lastUpdated"] == "2026-11-23T12:00:00Z"
    for value, found in [
        ("2026-11-23", 1),
        ("eq2026-11-23", 1),
        ("ge2026-11-23", 1),
        ("le2026-11-23", 1),
        ("gt2026-11-23", 0),
        ("lt2026-11-23", 0),
        ("eq2026-11-22", 0),
        ("gt2026-11-22", 1),
        ("lt2026-11-23T12:00:01Z", 1),
        ("gt2026-11-23T12:00:00Z", 0),
    ]:
        assert client.get("/fhir/Task", params={"_lastUpdated": value}).json()["total"] == found, value
    bad = client.get("/fhir/Task", params={"_lastUpdated": "yesterday"})
    assert bad.status_code == 400 and issues(bad.json())[0][1] == "_lastUpdated"


def test_a_task_search_brings_its_patient_focus_and_provenance_in_one_call(client) -> None:
    task = _case(client)
    _case(client, "third-party-bsw.case.json")
    bundle = client.get(
        "/fhir/Task",
        params=[("_id", task["id"]), ("_include", "Task:patient"), ("_include", "Task:focus"), ("_revinclude", "Provenance:target")],
    ).json()
    assert _ids(bundle) == [f"Task/{task['id']}"] and bundle["total"] == 1
    included = _ids(bundle, "include")
    assert task["for"]["reference"] in included and task["focus"]["reference"] in included
    provenances = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Provenance"]
    assert provenances and all(any(t["reference"].startswith(f"Task/{task['id']}") for t in p["target"]) for p in provenances)
    assert len(included) == len(set(included))
    plain = client.get("/fhir/Task", params={"_id": task["id"]}).json()
    assert _ids(plain, "include") == []
    refused = client.get("/fhir/Task", params={"_include": "Task:owner"})
    assert refused.status_code == 422 and issues(refused.json())[0][1] == "_include"


# -- versions: vread, _history, If-None-Match ------------------------------------------------------------------------


def test_a_cases_history_keeps_every_version_newest_first_CAS_08(client) -> None:
    task = _case(client, "option2-red-flag.case.json")
    assert op(client, task["id"], "cn-review", practitioner="CN", suitability="registered").status_code == 200
    assert op(client, task["id"], "record-contact-attempt", practitioner="CH", kind="safety-call", outcome="failed").status_code == 200
    current = client.get(f"/fhir/Task/{task['id']}").json()
    assert current["meta"]["versionId"] == "3"
    history = client.get(f"/fhir/Task/{task['id']}/_history")
    assert history.status_code == 200, history.text
    bundle = history.json()
    assert bundle["type"] == "history" and bundle["total"] == 3
    assert [e["resource"]["meta"]["versionId"] for e in bundle["entry"]] == ["3", "2", "1"]
    assert [e["request"]["method"] for e in bundle["entry"]] == ["PUT", "PUT", "POST"]
    assert bundle["entry"][2]["resource"] == task  # the version the referral created, as it was then
    priorities = [e["resource"]["priority"] for e in reversed(bundle["entry"])]
    order = ["routine", "urgent", "asap", "stat"]
    assert [order.index(p) for p in priorities] == sorted(order.index(p) for p in priorities)  # never downgraded
    first = client.get(f"/fhir/Task/{task['id']}/_history/1")
    assert first.status_code == 200 and first.json() == task and first.headers["etag"] == 'W/"1"'
    assert client.get(f"/fhir/Task/{task['id']}/_history/3").json() == current
    missing = client.get(f"/fhir/Task/{task['id']}/_history/4")
    assert missing.status_code == 404 and issues(missing.json())[0][1] == "version"
    assert client.get(f"/fhir/Task/{task['id']}/_history/99999999999999").status_code == 404
    assert client.get("/fhir/Task/no-such-task/_history").status_code == 404
    assert client.get("/fhir/Task/no-such-task/_history/1").status_code == 404
    assert client.get("/fhir/Medication/x/_history/1").status_code == 404
    assert client.get(f"/fhir/Task/{task['id']}/_history", params={"_count": "1"}).json()["entry"][0]["resource"] == current


def test_a_resource_is_versioned_from_its_first_write(client) -> None:
    task = _case(client)
    patient = client.get(f"/fhir/{task['for']['reference']}/_history").json()
    assert patient["total"] == 1 and patient["entry"][0]["response"]["status"] == "201 Created"
    refused = client.get("/fhir/Provenance/x/_history")
    assert refused.status_code == 422 and issues(refused.json())[0][1] == "_history"


def test_if_none_match_with_the_current_etag_is_answered_304(client) -> None:
    task = _case(client)
    read = client.get(f"/fhir/Task/{task['id']}")
    tag = read.headers["etag"]
    for path in (f"/fhir/Task/{task['id']}", f"/fhir/Task/{task['id']}/_history/1"):
        for sent in (tag, tag.removeprefix("W/"), f'W/"7", {tag}', "*"):
            unchanged = client.get(path, headers={"If-None-Match": sent})
            assert unchanged.status_code == 304 and unchanged.content == b"" and unchanged.headers["etag"] == tag, (path, sent)
    assert client.get(f"/fhir/Task/{task['id']}", headers={"If-None-Match": 'W/"7"'}).status_code == 200
    op(client, task["id"], "cn-review", practitioner="CN", suitability="registered")
    changed = client.get(f"/fhir/Task/{task['id']}", headers={"If-None-Match": tag})
    assert changed.status_code == 200 and changed.headers["etag"] == 'W/"2"'


# -- POST _search, Location, Prefer ----------------------------------------------------------------------------------


def test_a_form_encoded_post_search_answers_as_the_get_search_does(client, client_with) -> None:
    task = _case(client)
    _case(client, "third-party-bsw.case.json")
    reader = client_with({"fhir:read"})  # searching is reading: the scope of the GET search is enough
    form = {"_id": task["id"], "status": "ready"}
    posted = reader.post("/fhir/Task/_search", data=form)
    assert posted.status_code == 200, posted.text
    assert posted.json()["entry"] == reader.get("/fhir/Task", params=form).json()["entry"]
    both = reader.post("/fhir/Task/_search?_include=Task:patient", data={"_id": task["id"]}).json()
    assert _ids(both) == [f"Task/{task['id']}"] and _ids(both, "include") == [task["for"]["reference"]]
    assert all(link["url"].split("?")[0].endswith("/fhir/Task") for link in posted.json()["link"])  # as the GET it stands for
    unknown = reader.post("/fhir/Encounter/_search", data={"colour": "red"})
    assert unknown.status_code == 400 and issues(unknown.json())[0][1] == "colour"
    assert reader.post("/fhir/Medication/_search", data={}).status_code == 404
    not_a_form = reader.post("/fhir/Task/_search", content=b'{"_id": "x"}', headers={"Content-Type": "application/json"})
    assert not_a_form.status_code == 415 and issues(not_a_form.json())[0][1] == "header:Content-Type"
    too_big = reader.post("/fhir/Task/_search", data={"_id": "x" * 70_000})
    assert too_big.status_code == 413
    assert client_with({"ingest:nhs111"}).post("/fhir/Task/_search", data={}).status_code == 403


def test_location_is_absolute_with_the_version_and_a_resent_case_gets_it_again(client) -> None:
    body = fixture_bytes("option2-standard.case.json")
    first = client.post("/ingest/nhs111", content=body)
    task = task_of(first.json())
    expected = f"http://testserver/fhir/Task/{task['id']}/_history/1"
    assert first.headers["location"] == expected
    again = client.post("/ingest/nhs111", content=body)
    assert again.status_code == 201 and "x-duplicate-of" in again.headers
    assert again.headers["location"] == expected
    assert client.get(expected).json() == task


def test_prefer_return_minimal_on_a_create_answers_201_with_no_body(client) -> None:
    _case(client)  # the patient the response is about
    created = post_qr(client, phq9([1] * 9), {"Prefer": "return=minimal"})
    assert created.status_code == 201 and created.content == b""
    assert created.headers["location"].startswith("http://testserver/fhir/QuestionnaireResponse/")
    assert client.get(created.headers["location"]).json()["resourceType"] == "QuestionnaireResponse"
    full = post_qr(client, phq9([2] * 9, authored="2026-11-23T13:05:00+00:00"), {"Prefer": "return=representation"})
    assert full.status_code == 201 and full.json()["type"] == "batch-response"
    refused = post_qr(client, {"resourceType": "QuestionnaireResponse"}, {"Prefer": "return=minimal"})
    assert refused.status_code >= 400 and refused.json()["resourceType"] == "OperationOutcome"  # errors keep their body


def post_qr(client, resource: dict[str, Any], headers: dict[str, str]):  # type: ignore[no-untyped-def]
    return client.post(
        "/fhir/QuestionnaireResponse", content=json.dumps(resource).encode(), headers={"Content-Type": "application/fhir+json", **headers}
    )
