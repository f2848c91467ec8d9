"""Rule files are data: validated at load, chosen by destination, changed without code."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from adapters.referral import normalise_dx
from common.datetimes import add_working_days
from gateway.api.app import create_app
from gateway.cas.rules.schema import DEFAULT_RULES_DIR, RuleFileError, load_rules
from gateway.platform.settings import Settings
from tests.conftest import ALL_SCOPES, add_test_client, bearer, fixture_bytes, task_of


def _rules_copy(tmp_path: Path) -> Path:
    target = tmp_path / "rules"
    shutil.copytree(DEFAULT_RULES_DIR, target)
    return target


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_shipped_rule_files_load_and_route_by_destination_CAS_01() -> None:
    """CAS-01: shipped rule files load and route by destination."""
    registry = load_rules()
    assert set(registry.services) == {"bnssg", "bsw"}
    for destination, service in (("2000070001", "bnssg"), ("2000070002", "bsw"), ("111111111", "bnssg")):
        found = registry.for_destination(destination)
        assert found is not None, destination
        assert found.service.id == service
    assert registry.for_destination("0") is None


def test_call_handler_default_is_six_hours_in_both_services_CAS_03() -> None:
    """CAS-03: call handler default is six hours in both services."""
    registry = load_rules()
    assert {s.call_handler_timeframe for s in registry.services.values()} == {timedelta(hours=6)}


def test_dx_table_holds_the_public_windows_CAS_05() -> None:
    """CAS-05: dx table holds the public windows."""
    dispositions = load_rules().services["bnssg"].dispositions
    assert [dispositions[f"Dx{n}"].within for n in (11, 12, 13, 14, 15)] == [timedelta(hours=h) for h in (1, 2, 6, 12, 24)]
    assert dispositions["Dx92"].within == timedelta(hours=4)
    assert dispositions["Dx335"].within == timedelta(minutes=20)
    assert dispositions["Dx75"].within_working_days == 3
    assert "Dx0122" not in dispositions  # an ambulance disposition has no callback window


@pytest.mark.parametrize(
    ("sent", "normal"),
    [("DX02", "Dx02"), ("dx02", "Dx02"), ("Dx02", "Dx02"), ("Dx010", "Dx010"), (" DX335 ", "Dx335"), ("D02", None), ("Dx", None)],
)
def test_dx_codes_are_case_normalised_but_digits_kept_CAS_05(sent: str, normal: str | None) -> None:
    """CAS-05: dx codes are case normalised but digits kept."""
    assert normalise_dx(sent) == normal


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("call_handler_timeframe: PT6H", "call_handler_timeframe: six hours", "call_handler_timeframe"),
        ("Dx12:  {within: PT2H,", "Dx12:  {within: PT2H, within_working_days: 1,", "exactly one of"),
        ("Dx12:  {within: PT2H,", "DX12:  {within: PT2H,", "written Dx"),
        ("  - {up_to: PT2H, priority: asap}", "  - {up_to: PT2H, priority: high}", "task_priority"),
        ("schema: cas-queue/1", "schema: cas-queue/2", "schema"),
        ('version: "2026.12.3"', 'version: "2026.12.3"\nunexpected: 1', "unexpected"),
        ("  id: bnssg", "  id: bristol", "must match the file name"),
        ('    - "2000070001"', '    - "2000070002"', "claimed by both"),
    ],
)
def test_a_bad_rule_file_is_refused_at_load_naming_file_and_field(tmp_path: Path, old: str, new: str, message: str) -> None:
    rules = _rules_copy(tmp_path)
    _edit(rules / "bnssg.yaml", old, new)
    with pytest.raises(RuleFileError, match=message) as info:
        load_rules(rules)
    assert "bnssg" in str(info.value) or "claimed" in message


def test_gateway_refuses_to_start_on_a_bad_rule_file(tmp_path: Path) -> None:
    rules = _rules_copy(tmp_path)
    _edit(rules / "bsw.yaml", "call_handler_timeframe: PT6H", "call_handler_timeframe: PT0")
    with pytest.raises(RuleFileError, match="bsw.yaml"):
        create_app(Settings(DATABASE_URL=f"sqlite:///{tmp_path / 'g.db'}", rules_dir=rules, environment="test"))


def test_a_rule_change_is_a_data_change_CAS_03(tmp_path: Path, clock) -> None:  # type: ignore[no-untyped-def]
    rules = _rules_copy(tmp_path)
    _edit(rules / "bnssg.yaml", "call_handler_timeframe: PT6H", "call_handler_timeframe: PT4H")
    _edit(rules / "bnssg.yaml", 'version: "2026.12.3"', 'version: "2099.1.0"')
    app = create_app(Settings(DATABASE_URL=f"sqlite:///{tmp_path / 'g.db'}", rules_dir=rules, environment="test"), clock)
    with TestClient(app, headers=bearer(add_test_client(app, ALL_SCOPES))) as client:
        task = task_of(client.post("/ingest/nhs111", content=fixture_bytes("option2-standard.case.json")).json())
    assert task["restriction"]["period"]["end"] == "2026-11-23T13:15:00Z"
    assert {"rule-set": "bnssg cas-queue 2099.1.0"}.items() <= {
        i["type"]["coding"][0]["code"]: i.get("valueString") for i in task["input"]
    }.items()
    app.state.engine.dispose()


def test_working_days_skip_weekends_and_england_bank_holidays() -> None:
    friday = datetime(2026, 5, 22, 15, 0, tzinfo=UTC)  # Spring bank holiday Monday 25 May 2026
    assert add_working_days(friday, 1) == datetime(2026, 5, 26, 15, 0, tzinfo=UTC)
    # London wall time is kept across the clock change (29 Mar 2026): 09:00 GMT -> 09:00 BST
    before_change = datetime(2026, 3, 27, 9, 0, tzinfo=UTC)
    assert add_working_days(before_change, 1) == datetime(2026, 3, 30, 8, 0, tzinfo=UTC)
