"""Odd values from senders (300 characters long, holding a NUL, a lone surrogate): never a server error, on SQLite
and PostgreSQL alike.

No standard caps a sender's ids at the store's column sizes (HL7 v2.5 allows a 199-character MSH-10; an EI in
OBR-3 or TXA-12 may be longer), nor keeps a NUL out of them. Before gateway/platform/store/keys.py, PostgreSQL answered
such a message 500 while SQLite took it. Now such an id or identifier is indexed by its digest: taken,
de-duplicated and found like any other. JSON's lone surrogate escapes ("\ud800") are refused naming the element
(adapters/jsonparse.py): no UTF-8 store or reply can hold one.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from gateway.pathways.demo import contact
from gateway.platform.store.db import migrate
from gateway.platform.store.keys import identifier_key, message_key
from tests.conftest import ROOT, bars_headers, issues
from tests.letter_helpers import letter_request, pcmis_contacts
from tests.test_cas_operations import new_case, params
from tests.test_hl7v2 import msa, rio
from tests.test_hl7v2 import post as post_hl7
from tests.test_letters import latest_scores
from tests.test_pathway_api import tt_episode
from tests.test_pcmis import CONTACTS, rows, to_csv
from tests.test_pcmis import post as post_pcmis

LONG = 300  # characters: over every key column (128 for message ids, 255 for identifiers)
JSON_SOURCES = [
    ("/ingest/nhs111", "nhs111/option2-red-flag.case.json"),
    ("/ingest/mhpl", "mhpl/police-call.mhpl.json"),
    ("/fhir/$process-message", "nhs111/bars-dx13-self-harm-flag.bundle.json"),
    ("/fhir/ServiceRequest/$route", "pathways/tt-gp-referral-step-3.servicerequest.json"),
    ("/fhir/QuestionnaireResponse", "measures/phq-9-lhc-forms.qr.json"),
    ("/ingest/cleo", "cleo/consultation-registered.update.json"),
]
HL7_SOURCES = ["adt-a04-register.hl7", "oru-r01-progress-note.hl7", "ref-i12-referral.hl7", "mdm-t02-document.hl7"]


def _long(value: str) -> str:
    """The value repeated to LONG characters (its own characters, so a pattern check is not what refuses it)."""
    return (value * (LONG // max(1, len(value)) + 1))[:LONG] if value else "x" * LONG


def _with_nul(value: str) -> str:
    return value[:1] + "\x00" + value[1:]


def _with_surrogate(value: str) -> str:
    return value[:1] + "\ud800" + value[1:]  # json.dumps writes it as the escape \ud800


ODD = {"long": _long, "nul": _with_nul, "surrogate": _with_surrogate}


def _string_paths(doc: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from _string_paths(value, (*path, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            yield from _string_paths(value, (*path, index))
    elif isinstance(doc, str):
        yield path


def _changed(doc: Any, path: tuple[Any, ...], odd: str) -> Any:
    out = copy.deepcopy(doc)
    holder = out
    for step in path[:-1]:
        holder = holder[step]
    holder[path[-1]] = ODD[odd](holder[path[-1]])
    return out


@pytest.mark.parametrize("odd", ["long", "nul", "surrogate"])
@pytest.mark.parametrize(("url", "name"), JSON_SOURCES)
def test_an_odd_value_in_any_json_element_is_never_a_server_error(client, url: str, name: str, odd: str) -> None:
    doc = json.loads((ROOT / "fixtures" / name).read_text())
    failed = []
    for path in _string_paths(doc):
        headers = bars_headers() if "process-message" in url else {"Content-Type": "application/fhir+json"}
        response = client.post(url, content=json.dumps(_changed(doc, path, odd)), headers=headers)
        if response.status_code >= 500:
            failed.append(".".join(map(str, path)))
    assert failed == []


@pytest.mark.parametrize("odd", ["long", "nul"])  # CSV is UTF-8 bytes: no surrogate can be in it
@pytest.mark.parametrize("export", ["pcmis", "systmone"])
def test_an_odd_value_in_any_export_column_is_never_a_server_error(client, export: str, odd: str) -> None:
    record = rows((ROOT / "fixtures" / export / "contacts.csv").read_text())[0]
    failed = []
    for column in record:
        changed = record | {"contact_id": f"ODD-{column}"} | {column: ODD[odd](record[column])}
        response = client.post(f"/ingest/{export}", content=to_csv([changed]), headers={"Content-Type": "text/csv"})
        if response.status_code >= 500:
            failed.append(column)
    assert failed == []


@pytest.mark.parametrize("odd", ["long", "nul"])  # ER7 is UTF-8 or Latin-1 bytes: no surrogate can be in it
@pytest.mark.parametrize("name", HL7_SOURCES)
def test_an_odd_hl7_field_is_never_a_server_error(client, name: str, odd: str) -> None:
    segments = rio(name).decode().replace("\r\n", "\r").replace("\n", "\r").strip("\r").split("\r")
    failed = []
    for s, segment in enumerate(segments):
        fields = segment.split("|")
        for f in range(1 if s else 2, len(fields)):  # MSH: fields[1] holds the encoding characters
            changed = [list(seg.split("|")) for seg in segments]
            changed[s][f] = ODD[odd](fields[f])
            if (s, f) != (0, 9):
                changed[0][9] = f"ODD-{s}-{f}"  # a new control id each time, so no message is a re-send
            response = post_hl7(client, "\r".join("|".join(seg) for seg in changed).encode())
            if response.status_code >= 500:
                failed.append(f"{segment[:3]}-{f + (1 if s == 0 else 0)}")
    assert failed == []


@pytest.mark.parametrize("control_id", ["RIO-" + "7" * 196, "RIO-\x007"])  # v2.5 allows 199 characters, senders send more
def test_a_long_or_nul_hl7_control_id_is_acked_and_its_resend_gets_the_original_ack(client, stored, control_id: str) -> None:
    message = rio("adt-a04-register.hl7").decode().replace("|RIO-ADT-0002|", f"|{control_id}|", 1).encode()
    assert f"|{control_id}|" in message.decode()
    first = post_hl7(client, message)
    after_first = stored()
    again = post_hl7(client, message)
    assert msa(first.content)[1:3] == ["AA", control_id]
    assert again.content == first.content
    assert stored() == after_first


def test_a_long_contact_id_is_a_contact_and_its_resend_a_duplicate(client, stored) -> None:
    record = rows(CONTACTS.read_text())[0] | {"contact_id": "PCMIS-" + "C" * 250}
    first = post_pcmis(client, to_csv([record])).json()
    after_first = stored()
    again = post_pcmis(client, to_csv([record])).json()
    assert (first["accepted"], again["duplicate"]) == (1, 1)
    assert stored() == after_first


def test_a_patient_is_found_by_its_nhs_number_after_a_long_identifier_was_stored(client) -> None:
    referral = json.loads((ROOT / "fixtures" / "pathways" / "tt-gp-referral-step-3.servicerequest.json").read_text())
    referral["identifier"][0]["system"] = "https://example.nhs.uk/Id/" + "referral-" * 40
    assert client.post("/fhir/ServiceRequest/$route", json=referral).status_code == 201
    nhs = next(i["value"] for i in referral["contained"][0]["identifier"] if "nhs-number" in i["system"])
    found = client.get("/fhir/Patient", params={"identifier": f"https://fhir.nhs.uk/Id/nhs-number|{nhs}"}).json()
    assert found["total"] == 1


def test_a_nul_in_any_url_is_refused_naming_where_never_a_server_error(client) -> None:
    """Every operation of the OpenAPI spec, with a NUL (%00) in each path parameter and in a query parameter."""
    failed = []
    for path, operations in client.get("/openapi.json").json()["paths"].items():
        for method, operation in operations.items():
            url = re.sub(r"\{[^}]+\}", "x%00y", path)
            query = {p["name"]: "x\x00y" for p in operation.get("parameters", []) if p["in"] == "query"} or {"_count": "\x00"}
            response = client.request(method.upper(), url, params=query, content=b"{}", headers={"Content-Type": "application/fhir+json"})
            if response.status_code >= 500:
                failed.append(f"{method.upper()} {path}")
    assert failed == []
    refused = client.get("/fhir/Task/x%00y")
    assert refused.status_code == 400 and [i[:2] for i in issues(refused.json())] == [("error", "url")]
    refused = client.get("/fhir/Task", params={"patient": "x\x00y"})
    assert refused.status_code == 400 and [i[:2] for i in issues(refused.json())] == [("error", "patient")]


def test_a_lone_surrogate_is_refused_naming_its_element(client, stored) -> None:
    bundle = json.loads((ROOT / "fixtures" / "nhs111" / "bars-dx13-self-harm-flag.bundle.json").read_text())
    bundle["entry"][1]["resource"]["status"] = "act\ud800ive"
    before = stored()
    response = client.post("/fhir/$process-message", content=json.dumps(bundle), headers=bars_headers())
    assert response.status_code == 400
    assert [i[:2] for i in issues(response.json())] == [("error", "Bundle.entry[1].resource.status")]
    assert stored() == before


def test_a_bars_bundle_id_that_is_not_a_fhir_id_is_refused_naming_it(client, stored) -> None:
    bundle = json.loads((ROOT / "fixtures" / "nhs111" / "bars-dx13-self-harm-flag.bundle.json").read_text())
    bundle["id"] = "b" * 65
    before = stored()
    response = client.post("/fhir/$process-message", content=json.dumps(bundle), headers=bars_headers())
    assert response.status_code == 400
    assert [i[:2] for i in issues(response.json())] == [("error", "Bundle.id")]
    assert stored() == before


def test_long_or_nul_ids_an_sqlite_store_kept_as_sent_are_keyed_by_their_digest_on_upgrade(tmp_path: Path) -> None:
    """SQLite does not enforce lengths and keeps a NUL: migration 0005 re-keys such ids, and leaves the others."""
    engine = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    odd_ids, plain = ["M" * 200, "M\x00N", "M" * 128], "RIO-ADT-0002"
    migrate(engine, "0004")  # the schema as it was before 0005
    with engine.begin() as connection:
        for value in [*odd_ids, plain]:
            connection.execute(
                text(
                    "INSERT INTO inbound_messages (channel, message_id, received_at, raw, unused, response_status, response_body)"
                    " VALUES ('hl7v2', :id, '2026-11-23 12:00:00', x'00', '[]', 200, '{}')"
                ),
                {"id": value},
            )
            connection.execute(
                text("INSERT INTO resource_identifiers (resource_type, system, value, resource_id) VALUES ('Encounter', 's', :v, 'e1')"),
                {"v": value * 2},
            )
    migrate(engine)
    with engine.connect() as connection:
        keys = connection.execute(text("SELECT message_id FROM inbound_messages ORDER BY seq")).scalars().all()
        values = connection.execute(text("SELECT value FROM resource_identifiers")).scalars().all()
    assert keys == ["sha256:" + hashlib.sha256(b"M" * 200).hexdigest(), message_key("M\x00N"), "M" * 128, plain]
    assert keys[1].startswith("sha256:")
    assert sorted(values) == sorted([identifier_key(v * 2) for v in [*odd_ids, plain]])
    assert plain * 2 in values and sum(v.startswith("sha256:") for v in values) == 3


@pytest.mark.parametrize("odd", ["long", "nul", "surrogate"])
def test_an_odd_value_in_any_element_of_a_letter_request_is_never_a_server_error(client, odd: str) -> None:
    patient_id = pcmis_contacts(client)
    request = letter_request("odd-0", "tt-progress", patient_id, latest_scores(client, patient_id), lines=("A line.",))
    failed = []
    for n, path in enumerate(_string_paths(request)):
        changed = _changed(request, path, odd) if path != ("id",) else request | {"id": ODD[odd]("odd-id")}
        if path != ("id",):
            changed["id"] = f"odd-{n}"
        response = client.post("/fhir/CommunicationRequest", content=json.dumps(changed))
        if response.status_code >= 500:
            failed.append(".".join(map(str, path)))
    assert failed == []


@pytest.mark.parametrize("odd", ["long", "nul", "surrogate"])
def test_an_odd_value_in_any_operation_parameter_is_never_a_server_error(client, odd: str) -> None:
    """A CAS case operation and a pathway episode operation, each Parameters value made odd in turn."""
    task = new_case(client)
    episode = tt_episode(client)
    operations = [
        (f"/fhir/Task/{task['id']}/$record-contact-attempt", json.loads(params(practitioner="CH", kind="safety-call", outcome="failed"))),
        (f"/fhir/EpisodeOfCare/{episode}/$record-contact", contact("assessment", date_="2026-11-05T10:00:00+00:00")),
    ]
    failed = []
    for url, body in operations:
        for path in _string_paths(body):
            response = client.post(url, content=json.dumps(_changed(body, path, odd)), headers={"Content-Type": "application/fhir+json"})
            if response.status_code >= 500:
                failed.append(f"{url.rsplit('/', 1)[1]} {'.'.join(map(str, path))}")
    assert failed == []
