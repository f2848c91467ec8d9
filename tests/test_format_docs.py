"""The format documents in docs/formats/ match the fixtures: every field, column and segment a fixture uses is documented."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

DOCS = ROOT / "docs" / "formats"
FIX = ROOT / "fixtures"


def documented_names(doc: Path) -> set[str]:
    """Every name written in backticks in the document, with `a_1`..`a_9` ranges expanded."""
    text = doc.read_text()
    names: set[str] = set()
    for token in re.findall(r"`([^`]+)`", text):
        names |= set(re.findall(r"[A-Za-z][A-Za-z0-9_]*", token))
    for prefix, start, suffix, end in re.findall(r"`([a-z0-9_]*?)(\d+)([a-z_]*)`\.\.`[a-z0-9_]*?(\d+)[a-z_]*`", text):
        names |= {f"{prefix}{i}{suffix}" for i in range(int(start), int(end) + 1)}
    return names


def keys(node: Any) -> set[str]:
    out: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            out |= {key} | keys(value)
    elif isinstance(node, list):
        for item in node:
            out |= keys(item)
    return out


@pytest.mark.parametrize(
    ("doc", "fixtures"),
    [
        ("nhs111-case.md", "nhs111/*.case.json"),
        ("mhpl-call.md", "mhpl/*.json"),
        ("cleo.md", "cleo/*.json"),
        ("pathway-referral.md", "pathways/*.servicerequest.json"),
    ],
)
def test_json_fixtures_use_only_documented_fields(doc: str, fixtures: str) -> None:
    names = documented_names(DOCS / doc)
    used = set().union(*(keys(json.loads(p.read_text())) for p in FIX.glob(fixtures)))
    assert used and used <= names, sorted(used - names)


@pytest.mark.parametrize(
    ("doc", "fixture"), [("pcmis-contacts.md", "pcmis/contacts.csv"), ("systmone-extract.md", "systmone/contacts.csv")]
)
def test_csv_fixture_columns_are_all_documented(doc: str, fixture: str) -> None:
    header = next(csv.reader(io.StringIO((FIX / fixture).read_text())))
    assert set(header) <= documented_names(DOCS / doc), sorted(set(header) - documented_names(DOCS / doc))


def test_hl7_fixture_message_types_and_segments_are_documented() -> None:
    names = documented_names(DOCS / "rio-hl7v2.md")
    text = (DOCS / "rio-hl7v2.md").read_text()
    for path in FIX.glob("rio/*.hl7"):
        segments = [s[:3] for s in path.read_bytes().decode().split("\r") if s]
        message_type = path.read_bytes().decode().split("\r")[0].split("|")[8].split("^")
        assert f"{message_type[0]}^{message_type[1]}" in text or message_type[1] in text
        assert set(segments) <= names | {"MSH"}, sorted(set(segments) - names)


def test_every_adapter_has_a_format_document() -> None:
    adapters = {p.stem for p in (ROOT / "adapters").glob("*.py")} - {
        "__init__",
        "problems",
        "jsonparse",
        "json_shapes",
        "referral",
        "case_json",
        "csv_rows",
    }
    documented = {
        "nhs111_case": "nhs111-case.md",
        "bars": "bars.md",
        "bars_message": "bars.md",
        "mhpl": "mhpl-call.md",
        "hl7v2": "rio-hl7v2.md",
        "hl7v2_fields": "rio-hl7v2.md",
        "hl7v2_patient": "rio-hl7v2.md",
        "cleo": "cleo.md",
        "pcmis": "pcmis-contacts.md",
        "systmone": "systmone-extract.md",
        "pathway_referral": "pathway-referral.md",
        "epraccur": "gp-practices.md",
    }
    assert adapters == set(documented)
    assert all((DOCS / name).exists() for name in documented.values())
