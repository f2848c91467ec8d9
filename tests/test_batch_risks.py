"""Issue 33 item 9 for EPR contact batches over HTTP: a risk answer in a row that is not stored (refused for its columns,
or a changed re-send of a contact that stands) is never lost: the Flag is raised, or the open CAS case escalated
(CAS-10), all the same, and the row's issues say so (CAS-04)."""

from __future__ import annotations

from typing import Any

from tests.conftest import ROOT
from tests.test_pcmis import rows, to_csv

PCMIS = ROOT / "fixtures" / "pcmis" / "contacts.csv"
SYSTMONE = ROOT / "fixtures" / "systmone" / "contacts.csv"
ITEM9 = "item.where(linkId='44260-8')"


def _post(client, channel: str, records: list[dict[str, str]]) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    reply = client.post(f"/ingest/{channel}", content=to_csv(records), headers={"Content-Type": "text/csv"})
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def _warnings(row: dict[str, Any]) -> list[tuple[str, str]]:
    return [(i["expression"][0], i["diagnostics"]) for i in row.get("issues", []) if i["severity"] == "warning"]


def test_phq9_item9_in_a_pcmis_row_refused_for_another_column_raises_a_flag_CAS_04(client, stored) -> None:  # type: ignore[no-untyped-def]
    records = rows(PCMIS.read_text())[:1]
    records[0] |= {"therapist_role": "Nurse", "phq9_9": "3"}
    row = _post(client, "pcmis", records)["rows"][0]
    assert row["outcome"] == "refused"
    ((element, said),) = _warnings(row)
    assert element == f"row[1].{ITEM9}" and "acted on although this response is refused" in said and "Flag/" in said
    flag = client.get(f"/fhir/Flag/{said.split('Flag/', 1)[1].split(' ', 1)[0]}")
    assert flag.status_code == 200 and "refused for other reasons" in flag.json()["code"]["text"]
    assert stored().get("Encounter", 0) == 0 and stored().get("QuestionnaireResponse", 0) == 0
    again = _post(client, "pcmis", records)["rows"][0]  # the same refused row again: found done, not raised twice
    assert again["outcome"] == "refused" and "raised when this response was first sent" in _warnings(again)[0][1]
    assert stored().get("Flag") == 1


def test_phq9_item9_in_a_systmone_row_refused_for_another_column_raises_a_flag_CAS_04(client, stored) -> None:  # type: ignore[no-untyped-def]
    records = rows(SYSTMONE.read_text())[:1]
    records[0] |= {"clinician_role": "Porter", "phq9_9": "2"}
    row = _post(client, "systmone", records)["rows"][0]
    assert row["outcome"] == "refused"
    said = dict(_warnings(row))  # the fixture's row also answers ReQoL-10 item 6 "often": acted on as well
    assert len(said) == 2 and "Flag/" in said[f"row[1].{ITEM9}"] and any("ReQoL-10 item 6" in text for text in said.values())
    assert stored().get("Flag") == 2 and stored().get("Encounter", 0) == 0


def test_a_risk_answer_in_a_changed_resend_raises_a_flag_while_the_first_contact_stands_CAS_04(client, stored) -> None:  # type: ignore[no-untyped-def]
    records = rows(PCMIS.read_text())[:1]
    assert _post(client, "pcmis", records)["accepted"] == 1
    assert stored().get("Flag", 0) == 0
    records[0] |= {"phq9_9": "3"}  # the export now records item 9 answered "nearly every day"
    row = _post(client, "pcmis", records)["rows"][0]
    assert row["outcome"] == "conflict"
    assert [e for e, _ in _warnings(row)] == [f"row[1].{ITEM9}"] and "Flag/" in _warnings(row)[0][1]
    assert stored().get("Flag") == 1


def test_a_risk_answer_in_a_refused_row_without_a_valid_nhs_number_says_it_was_not_acted_on_CAS_04(client, stored) -> None:  # type: ignore[no-untyped-def]
    records = rows(PCMIS.read_text())[:1]
    records[0] |= {"nhs_number": "9990000183", "phq9_9": "3"}  # fails the modulus 11 check
    row = _post(client, "pcmis", records)["rows"][0]
    assert row["outcome"] == "refused" and "NOT acted on" in _warnings(row)[0][1]
    assert stored().get("Flag", 0) == 0


def test_a_refused_row_without_a_risk_answer_is_refused_as_before(client, stored) -> None:  # type: ignore[no-untyped-def]
    records = rows(PCMIS.read_text())[:1]
    records[0] |= {"therapist_role": "Nurse"}  # item 9 answered 0
    row = _post(client, "pcmis", records)["rows"][0]
    assert row["outcome"] == "refused" and _warnings(row) == [] and stored().get("Flag", 0) == 0
