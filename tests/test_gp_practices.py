"""The GP practice directory (issue 34): loaded by a command from an ODS epraccur.csv (a small synthetic file in that
layout), refreshed by loading again, and read for the "To:" of a letter to the practice; a code it does not hold still
gets the letter, addressed by code."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from adapters.epraccur import read_epraccur
from tests.conftest import ROOT
from tests.letter_helpers import completed_case
from tests.test_letters import pdf_text, the_letter

EPRACCUR = ROOT / "fixtures" / "ods" / "epraccur-synthetic.csv"
CLI = [str(ROOT / ".venv" / "bin" / "iap-gateway")]


def _load(database_url: str, path: Path) -> str:
    env = {**os.environ, "DATABASE_URL": database_url}
    result = subprocess.run([*CLI, "practices", "load", str(path)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_epraccur_layout_is_read_with_name_address_and_status() -> None:
    practices, problems = read_epraccur(EPRACCUR.read_bytes() + b'"BAD"\n')
    assert [p.ods for p in practices] == ["L81001", "F81001", "Z81999"] and problems == [
        "line 4: 1 columns, expected at least 13 (epraccur layout)"
    ]
    assert practices[0].name == "The Synthetic Surgery" and practices[0].address == ("1 Synthetic Lane", "Bristol", "BS1 1AA")
    assert practices[2].status == "C"


def test_a_letter_to_a_practice_in_the_directory_names_it_and_its_address(client, database_url, tmp_path) -> None:
    assert "3 practices read: 3 added, 0 updated" in _load(database_url, EPRACCUR)
    changed = tmp_path / "epraccur.csv"
    changed.write_text(EPRACCUR.read_text().replace("1 SYNTHETIC LANE", "10 SYNTHETIC LANE"))
    assert "3 practices read: 0 added, 1 updated" in _load(database_url, changed)  # refreshed by running it again
    completed_case(client)
    _, letter, _ = the_letter(client)
    text = " ".join(pdf_text(letter).split())
    assert "To: The Synthetic Surgery, 10 Synthetic Lane, Bristol, BS1 1AA (L81001)" in text


def test_a_practice_the_directory_does_not_hold_still_gets_the_letter_addressed_by_code(client) -> None:
    completed_case(client)
    delivery, letter, _ = the_letter(client)
    text = " ".join(pdf_text(letter).split())
    assert "(L81001)" in text and "Synthetic Lane" not in text
    assert delivery["recipient"] == "L81001" and delivery["status"] == "pending"
