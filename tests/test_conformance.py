"""Everything the gateway emits for the fixtures passes the independent FHIR R4 validator with 0 errors.

`fhir.resources` accepts invalid codes (Task.status = "bogus"); shared/tools/fhir-validate
(three engines: medplum, FHIR.js, strict) does not.
"""

from __future__ import annotations

import json
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

from tests.conftest import BARS_EXAMPLES, FIXTURES, NOW, ROOT, bars_headers

VALIDATOR = ROOT.parent / "shared" / "tools" / "fhir-validate" / "fhir-validate"
NHS_NUMBER = "https://fhir.nhs.uk/Id/nhs-number"
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"


def _validate(folder: Path) -> subprocess.CompletedProcess[str]:
    assert VALIDATOR.exists(), f"the validator is expected at {VALIDATOR}"
    return subprocess.run([str(VALIDATOR), "--errors-only", str(folder)], capture_output=True, text=True, timeout=300)


def _collect(client) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    emitted: dict[str, Any] = {}
    for golden in sorted((FIXTURES / "expected").glob("*.json")):
        emitted[f"map-{golden.name}"] = json.loads(golden.read_text())  # what `iap-gateway map` prints
    for source in sorted(FIXTURES.glob("*.json")):
        if source.name.endswith(".bundle.json"):
            headers = bars_headers()
            reply = client.post("/fhir/$process-message", content=source.read_bytes(), headers=headers)
            emitted[f"duplicate-{source.name}"] = client.post("/fhir/$process-message", content=source.read_bytes(), headers=headers).json()
        else:
            reply = client.post("/ingest/nhs111", content=source.read_bytes())
        assert reply.status_code in (200, 201), reply.text
        emitted[f"reply-{source.name}"] = reply.json()
        for entry in reply.json()["entry"]:
            resource = entry["resource"]
            if resource["resourceType"] in ("MessageHeader", "OperationOutcome"):
                continue
            stored = client.get(f"/fhir/{resource['resourceType']}/{resource['id']}").json()
            emitted[f"stored-{resource['resourceType']}-{resource['id']}"] = stored
    emitted["search-task"] = client.get("/fhir/Task", params={"_count": 3}).json()
    emitted["search-patient"] = client.get("/fhir/Patient", params={"identifier": f"{NHS_NUMBER}|9990000018"}).json()
    emitted["metadata"] = client.get("/fhir/metadata").json()
    for example in (
        "servicerequest-request-validation.json",
        "999-to-cas-servicerequest-older.json",
        "111-to-ed-servicerequest-older.not-valid-json.txt",
    ):
        emitted[f"refusal-{example}"] = client.post(
            "/fhir/$process-message", content=(BARS_EXAMPLES / example).read_bytes(), headers=bars_headers()
        ).json()
    emitted["refusal-not-found"] = client.get("/fhir/Task/nope").json()
    # outcome measures: every shipped Questionnaire, and what each measure fixture becomes (response, scores, risk)
    for entry in client.get("/fhir/Questionnaire").json()["entry"]:
        emitted[f"questionnaire-{entry['resource']['id']}"] = entry["resource"]
    for source in sorted((FIXTURES.parent / "measures").glob("*.json")):
        reply = client.post("/fhir/QuestionnaireResponse", content=source.read_bytes())
        assert reply.status_code == 201, reply.text
        emitted[f"measure-reply-{source.name}"] = reply.json()
    patient = client.get("/fhir/Patient", params={"identifier": f"{NHS_NUMBER}|9990000042"}).json()["entry"][0]["resource"]
    emitted["observation-search"] = client.get("/fhir/Observation", params={"patient": patient["id"]}).json()
    emitted.update(_cas_scenario(client))
    return emitted


def _cas_scenario(client) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Operations, safety calls, MHPL, Specialist Desk, risk level: what they emit."""
    from gateway.cas.safety_calls import tick
    from tests.conftest import NOW, task_of
    from tests.test_cas_operations import op, params

    out: dict[str, Any] = {}
    desk = task_of(client.post("/ingest/nhs111", content=(FIXTURES / "specialist-desk-ooh.case.json").read_bytes()).json())
    out["op-cn-review"] = op(client, desk["id"], "cn-review", practitioner="CN", suitability="registered").json()
    out["op-contact"] = op(client, desk["id"], "record-contact-attempt", practitioner="CH", kind="safety-call", outcome="failed").json()
    out["op-end"] = op(client, desk["id"], "end-assessment", practitioner="R", registered=False, notes="Synthetic notes.").json()
    assert all("id" in out[k] for k in ("op-cn-review", "op-contact", "op-end")), out
    app = client.app
    tick(app.state.sessions, app.state.registry, NOW.replace(hour=23))
    mhpl = (FIXTURES.parent / "mhpl" / "police-call.mhpl.json").read_bytes()
    out["mhpl-reply"] = client.post("/ingest/mhpl", content=mhpl).json()
    out["risk-level"] = client.post("/queue/$confirm-risk-level", content=params(service="bnssg", level="low", practitioner="CN")).json()
    out["explain"] = client.get(f"/fhir/Task/{desk['id']}/$explain").json()
    for message in sorted((FIXTURES.parent / "rio").glob("*.hl7")):
        assert client.post("/ingest/hl7v2", content=message.read_bytes()).headers["x-hl7-ack-code"] == "AA"
    batch = client.post("/ingest/pcmis", content=(FIXTURES.parent / "pcmis" / "contacts.csv").read_bytes()).json()
    assert batch["accepted"] == 3
    extract = client.post("/ingest/systmone", content=(FIXTURES.parent / "systmone" / "contacts.csv").read_bytes()).json()
    assert extract["accepted"] == 2
    cleo = (FIXTURES.parent / "cleo" / "consultation-registered.update.json").read_text().replace("REPLACE-WITH-TASK-ID", desk["id"])
    client.post("/ingest/cleo", content=cleo)
    out["notifications"] = client.get("/fhir/CommunicationRequest", params={"status": "active"}).json()
    out.update(_pathway_scenario(client))
    out.update(_letters(client))
    return out


def _pathway_scenario(client) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Every pathway fixture routed, then episode operations and clocks (PC and TT), so all they write is validated."""
    from datetime import datetime

    from gateway.pathways.demo import contact

    out: dict[str, Any] = {}
    episodes = {}
    for source in sorted((FIXTURES.parent / "pathways").glob("*.servicerequest.json")):
        reply = client.post("/fhir/ServiceRequest/$route", content=source.read_bytes())
        assert reply.status_code == 201, reply.text
        out[f"pathway-{source.stem}"] = reply.json()
        episode = next((p["valueReference"]["reference"] for p in reply.json()["parameter"] if p["name"] == "episode"), None)
        if episode:
            episodes[source.stem.split(".")[0]] = episode
    tt, pc = episodes["tt-gp-referral-step-3"], episodes["pc-step-up-from-secondary-care"]
    allocate = {
        "resourceType": "Parameters",
        "parameter": [{"name": "practitioner", "valueString": "KW"}, {"name": "intervention", "valueString": "CBT"}],
    }
    client.app.state.clock.set(NOW + timedelta(days=4))  # the contacts below (24 to 26 Nov) have happened
    for ref, name, body in [
        (pc, "allocate", allocate),
        (pc, "record-contact", contact("assessment", date_="2026-11-24T10:00:00+00:00")),
        (tt, "allocate", allocate),
        (tt, "record-contact", contact("assessment", date_="2026-11-24T10:00:00+00:00")),
        (tt, "record-contact", contact("treatment", "dna", "2026-11-25T10:00:00+00:00")),
        (tt, "progress-letter", {"resourceType": "Parameters", "parameter": []}),
        (
            pc,
            "step",
            {"resourceType": "Parameters", "parameter": [{"name": "direction", "valueCode": "out"}, {"name": "to", "valueString": "gp"}]},
        ),
    ]:
        reply = client.post(f"/fhir/{ref}/${name}", json=body)
        assert reply.status_code == 200, reply.text
    # a PCMIS contact recorded on the TT episode: the PCMIS Encounter joins it, with the pathway's contact codings
    from tests.test_pathway_api import row_encounter
    from tests.test_pcmis import rows, to_csv

    row = rows((FIXTURES.parent / "pcmis" / "contacts.csv").read_text())[0]
    row |= {"contact_id": "CONFORMANCE-TT", "nhs_number": "9990000182", "contact_time": "2026-11-26T10:00:00+00:00"}
    linked = client.post("/ingest/pcmis", content=to_csv([row | {"appointment_type": "treatment"}])).json()["rows"][0]
    assert linked["outcome"] == "accepted" and "issues" not in linked, linked
    encounter = row_encounter(client, linked)
    assert encounter["episodeOfCare"] == [{"reference": tt}]
    out["pathway-pcmis-encounter"] = encounter
    client.app.state.pathways.tick(datetime.fromisoformat("2027-03-30T12:00:00+00:00"))
    out["pathway-explain"] = client.get(f"/fhir/{tt}/$explain").json()
    out["pathway-episodes"] = client.get("/fhir/EpisodeOfCare").json()
    return out


def _letters(client) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Letters (issue 7): a consultation report, a TT progress letter by request, a withheld one; documents and requests."""
    import tempfile

    from tests.conftest import task_of
    from tests.letter_helpers import letter_request, make_deliverer, params, write_routing

    out: dict[str, Any] = {}
    task = task_of(client.post("/ingest/nhs111", content=(FIXTURES / "option2-standard.case.json").read_bytes()).json())
    client.post(f"/fhir/Task/{task['id']}/$end-assessment", content=params(practitioner="R", registered=True, notes="Synthetic notes."))
    pcmis = client.get("/fhir/Patient", params={"identifier": f"{NHS_NUMBER}|9990000158"}).json()["entry"][0]["resource"]
    scores = client.get("/fhir/Observation", params={"patient": pcmis["id"], "code": "http://loinc.org|44261-6"}).json()["entry"]
    request = letter_request("conformance-tt-progress", "tt-progress", pcmis["id"], [f"Observation/{scores[-1]['resource']['id']}"])
    out["letter-request-reply"] = client.post("/fhir/CommunicationRequest", content=json.dumps(request)).json()
    with tempfile.TemporaryDirectory() as folder:
        worker = make_deliverer(client.app, client.app.state.clock, routing_file=write_routing(Path(folder), gpprovider=False))
        worker.deliver_once(limit=100)  # the TT letter withheld (TT-14, with its Provenance); the others dead: no route
        worker.close()
    for row in client.get("/outbox").json()["entries"]:
        out[f"letter-{row['id']}"] = client.get(f"/fhir/{row['letter']}").json()
        out[f"document-{row['id']}"] = client.get(f"/fhir/{row['document']}").json()
    assert any(r["status"] == "withheld" for r in client.get("/outbox").json()["entries"])
    return out


def _everything_stored(app) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from gateway.platform.store.models import ResourceRow

    with app.state.sessions() as session:
        return {f"stored-all-{r.resource_type}-{r.id}": json.loads(r.content) for r in session.execute(select(ResourceRow)).scalars()}


def _audit_trail(client, anonymous) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Every AuditEvent the scenario left (creates, reads, searches, operations, refusals, a delivery), and a search of them."""
    from sqlalchemy import select

    from gateway.platform.audit import record_delivery
    from gateway.platform.store.models import AuditEventRow
    from tests.conftest import NOW

    assert anonymous.get("/fhir/Task").status_code == 401
    with client.app.state.sessions.begin() as session:
        record_delivery(
            session, channel="mesh", destination="X26ABC1", entities=["CommunicationRequest/x"], outcome="delivered", detail="ok", now=NOW
        )
    out = {"audit-search": client.get("/fhir/AuditEvent", params={"_count": 200}).json()}
    with client.app.state.sessions() as session:
        for row in session.execute(select(AuditEventRow)).scalars():
            out[f"audit-{row.id}"] = json.loads(row.content)
    assert {e["type"]["code"] for e in out.values() if e["resourceType"] == "AuditEvent"} >= {"rest", "110106", "110100"}
    return out


def _crawl(client) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """What a FHIR client can reach in the loaded gateway: every type's search (Task with its _include/_revinclude, a
    count-only one, a lenient one with its warning), every match read by id (and its _history and first version where
    versions are kept), every OperationDefinition, every GET $operation on every resource it applies to, and refusals
    (406, 404, 400)."""
    out: dict[str, Any] = {}
    statement = client.get("/fhir/metadata").json()
    found: dict[str, list[str]] = {}
    for entry in statement["rest"][0]["resource"]:
        rtype = entry["type"]
        interactions = {i["code"] for i in entry["interaction"]}
        for op in entry.get("operation", []):
            definition = client.get(f"/fhir/OperationDefinition/{op['definition'].rsplit('/', 1)[1]}")
            assert definition.status_code == 200, op
            out[f"crawl-definition-{rtype}-{op['name']}"] = definition.json()
        if "search-type" not in interactions:
            continue
        params: list[tuple[str, str]] = [("_count", "200"), ("_lastUpdated", "ge2000-01-01")]
        params += [("_include", name) for name in entry.get("searchInclude", [])]
        params += [("_revinclude", name) for name in entry.get("searchRevInclude", [])]
        bundle = client.get(f"/fhir/{rtype}", params=params)
        assert bundle.status_code == 200, (rtype, bundle.text)
        out[f"crawl-search-{rtype}"] = bundle.json()
        out[f"crawl-count-{rtype}"] = client.get(f"/fhir/{rtype}", params={"_summary": "count", "_id": "x"}).json()
        matches = [e["resource"]["id"] for e in bundle.json().get("entry", []) if e["search"]["mode"] == "match"]
        found[rtype] = matches
        for rid in matches[:20] if rtype == "AuditEvent" else matches:
            read = client.get(f"/fhir/{rtype}/{rid}")
            assert read.status_code == 200, (rtype, rid, read.text)
            out[f"crawl-read-{rtype}-{rid}"] = read.json()
            if "history-instance" in interactions:
                history = client.get(f"/fhir/{rtype}/{rid}/_history")
                assert history.status_code == 200, (rtype, rid, history.text)
                out[f"crawl-history-{rtype}-{rid}"] = history.json()
                out[f"crawl-vread-{rtype}-{rid}"] = client.get(f"/fhir/{rtype}/{rid}/_history/1").json()
    assert {"Task", "Patient", "Encounter", "ServiceRequest", "Provenance", "EpisodeOfCare"} <= {t for t, ids in found.items() if ids}
    for entry in statement["rest"][0]["resource"]:
        for op in entry.get("operation", []):
            definition = out[f"crawl-definition-{entry['type']}-{op['name']}"]
            if definition["affectsState"] or not definition["instance"]:
                continue  # POST operations' replies are validated from the scenarios above
            for rid in found.get(entry["type"], []):
                reply = client.get(f"/fhir/{entry['type']}/{rid}/${op['name']}")
                assert reply.status_code == 200, (entry["type"], op["name"], reply.text)
                out[f"crawl-op-{entry['type']}-{op['name']}-{rid}"] = reply.json()
    lenient = client.get("/fhir/Encounter", params={"colour": "red", "_count": "2"}, headers={"Prefer": "handling=lenient"})
    out["crawl-lenient"] = lenient.json()
    out["crawl-406"] = client.get("/fhir/Task", headers={"Accept": "application/fhir+xml"}).json()
    out["crawl-404-type"] = client.get("/fhir/Medication").json()
    out["crawl-400-parameter"] = client.get("/fhir/Task", params={"colour": "red"}).json()
    return out


def test_everything_emitted_and_served_for_the_fixtures_passes_the_independent_validator(client, anonymous, tmp_path: Path) -> None:
    emitted = _collect(client)
    emitted.update(_everything_stored(client.app))  # every resource in the store, whatever wrote it
    emitted.update(_crawl(client))
    emitted.update(_audit_trail(client, anonymous))
    for name, resource in emitted.items():
        (tmp_path / f"{name.replace('/', '_')}.json").write_text(json.dumps(resource))
    result = _validate(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith(" 0 errors"), result.stdout
    assert len(emitted) > 50


def test_the_validator_really_catches_what_fhir_resources_lets_through(tmp_path: Path) -> None:
    (tmp_path / "bogus.json").write_text(json.dumps({"resourceType": "Task", "id": "t1", "intent": "order", "status": "bogus"}))
    result = _validate(tmp_path)
    assert result.returncode == 1 and "bogus" in result.stdout


def test_emitted_resources_carry_uk_core_identifier_systems(client) -> None:
    emitted = _collect(client)
    patients = [r for r in emitted.values() if r.get("resourceType") == "Patient"]
    tasks = [r for r in emitted.values() if r.get("resourceType") == "Task"]
    assert patients and tasks
    for patient in patients:
        assert [i["system"] for i in patient["identifier"]] == [NHS_NUMBER]
        assert patient["meta"]["profile"] == ["https://fhir.hl7.org.uk/StructureDefinition/UKCore-Patient"]
        for gp in patient.get("generalPractitioner", []):
            assert gp["identifier"]["system"] == ODS
    for task in tasks:
        assert task["owner"]["identifier"]["system"] == ODS


def test_shipped_questionnaires_and_produced_responses_parse_with_fhir_resources(client) -> None:
    from fhir.resources.R4B import get_fhir_model_class

    emitted = _collect(client)
    checked = 0
    for resource in emitted.values():
        for item in [e["resource"] for e in resource.get("entry", [])] if resource["resourceType"] == "Bundle" else [resource]:
            if item["resourceType"] in ("Questionnaire", "QuestionnaireResponse", "Observation", "Flag"):
                get_fhir_model_class(item["resourceType"]).model_validate(item)
                checked += 1
    assert checked > 20
