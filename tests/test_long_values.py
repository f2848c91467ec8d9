"""Over-long values from senders: never a server error, on SQLite and PostgreSQL alike.

No standard caps a sender's ids at the store's column sizes (HL7 v2.5 allows a 199-character MSH-10; an EI in
OBR-3 or TXA-12 may be longer). Before gateway/store/keys.py, PostgreSQL answered such a message 500 while SQLite
took it. Now a long id or identifier is indexed by its digest: taken, de-duplicated and found like any other.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text

from gateway.store.db import MIGRATIONS_DIR, migrate
from gateway.store.keys import message_key
from tests.conftest import ROOT, bars_headers, issues
from tests.test_hl7v2 import msa, rio
from tests.test_hl7v2 import post as post_hl7
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


def _string_paths(doc: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from _string_paths(value, (*path, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            yield from _string_paths(value, (*path, index))
    elif isinstance(doc, str):
        yield path


def _lengthened(doc: Any, path: tuple[Any, ...]) -> Any:
    out = copy.deepcopy(doc)
    holder = out
    for step in path[:-1]:
        holder = holder[step]
    holder[path[-1]] = _long(holder[path[-1]])
    return out


@pytest.mark.parametrize(("url", "name"), JSON_SOURCES)
def test_an_over_long_value_in_any_json_element_is_never_a_server_error(client, url: str, name: str) -> None:
    doc = json.loads((ROOT / "fixtures" / name).read_text())
    failed = []
    for path in _string_paths(doc):
        headers = bars_headers() if "process-message" in url else {"Content-Type": "application/fhir+json"}
        response = client.post(url, content=json.dumps(_lengthened(doc, path)), headers=headers)
        if response.status_code >= 500:
            failed.append(".".join(map(str, path)))
    assert failed == []


@pytest.mark.parametrize("export", ["pcmis", "systmone"])
def test_an_over_long_value_in_any_export_column_is_never_a_server_error(client, export: str) -> None:
    record = rows((ROOT / "fixtures" / export / "contacts.csv").read_text())[0]
    failed = []
    for column in record:
        changed = record | {"contact_id": f"LONG-{column}"} | {column: _long(record[column])}
        response = client.post(f"/ingest/{export}", content=to_csv([changed]), headers={"Content-Type": "text/csv"})
        if response.status_code >= 500:
            failed.append(column)
    assert failed == []


@pytest.mark.parametrize("name", HL7_SOURCES)
def test_an_over_long_hl7_field_is_never_a_server_error(client, name: str) -> None:
    segments = rio(name).decode().replace("\r\n", "\r").replace("\n", "\r").strip("\r").split("\r")
    failed = []
    for s, segment in enumerate(segments):
        fields = segment.split("|")
        for f in range(1 if s else 2, len(fields)):  # MSH: fields[1] holds the encoding characters
            changed = [list(seg.split("|")) for seg in segments]
            changed[s][f] = _long(fields[f])
            if (s, f) != (0, 9):
                changed[0][9] = f"LONG-{s}-{f}"  # a new control id each time, so no message is a re-send
            response = post_hl7(client, "\r".join("|".join(seg) for seg in changed).encode())
            if response.status_code >= 500:
                failed.append(f"{segment[:3]}-{f + (1 if s == 0 else 0)}")
    assert failed == []


def test_a_long_hl7_control_id_is_acked_and_its_resend_gets_the_original_ack(client, stored) -> None:
    control_id = "RIO-" + "7" * 196  # 200 characters: v2.5 allows 199 in MSH-10, senders send more
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


def test_a_bars_bundle_id_that_is_not_a_fhir_id_is_refused_naming_it(client, stored) -> None:
    bundle = json.loads((ROOT / "fixtures" / "nhs111" / "bars-dx13-self-harm-flag.bundle.json").read_text())
    bundle["id"] = "b" * 65
    before = stored()
    response = client.post("/fhir/$process-message", content=json.dumps(bundle), headers=bars_headers())
    assert response.status_code == 400
    assert [i[:2] for i in issues(response.json())] == [("error", "Bundle.id")]
    assert stored() == before


def test_a_long_message_id_stored_as_sent_before_is_keyed_by_its_digest_on_upgrade(tmp_path: Path) -> None:
    """An SQLite store kept long ids as sent (it does not enforce lengths): migration 0005 re-keys them."""
    engine = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    long_id = "M" * 200
    with engine.begin() as connection:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.attributes["connection"] = connection
        command.upgrade(config, "0004")
        connection.execute(
            text(
                "INSERT INTO inbound_messages (channel, message_id, received_at, raw, unused, response_status, response_body)"
                " VALUES ('hl7v2', :id, '2026-11-23 12:00:00', x'00', '[]', 200, '{}')"
            ),
            {"id": long_id},
        )
        connection.execute(
            text("INSERT INTO resource_identifiers (resource_type, system, value, resource_id) VALUES ('Encounter', 's', :v, 'e1')"),
            {"v": long_id * 2},
        )
    migrate(engine)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT message_id FROM inbound_messages")).scalar_one() == message_key(long_id)
        assert connection.execute(text("SELECT value FROM resource_identifiers")).scalar_one().startswith("sha256:")
