"""Rule changes previewed on real traffic (issue 37): `rules check`, `rules what-if`, `rules activate`, over a stored week.

A week of referrals goes in over HTTP with an injected clock; the CLI (typer's CliRunner, DATABASE_URL set) then checks
and replays candidates against it. What-if must name exactly the cases whose breach time (CAS-05) or breach colour
(CAS-09) changes, and leave the store exactly as it was.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, inspect, select, text
from typer.testing import CliRunner

from gateway.api.app import create_app
from gateway.cas.rules.schema import DEFAULT_RULES_DIR, RuleFileError
from gateway.cli import app as cli
from gateway.platform.clock import FixedClock
from gateway.platform.store.models import ResourceRow
from tests.conftest import ALL_SCOPES, add_test_client, bars_headers, bearer, fixture_bytes, fixture_json, gateway_settings, task_of

END = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)  # "now" for every what-if run below
LIVE = (DEFAULT_RULES_DIR / "bnssg.yaml").read_text(encoding="utf-8")


def _candidate(tmp_path: Path, name: str, *edits: tuple[str, str]) -> Path:
    text_ = LIVE.replace('version: "2026.12.3"', 'version: "2026.12.99"')
    for old, new in edits:
        assert old in text_, old
        text_ = text_.replace(old, new)
    path = tmp_path / name
    path.write_text(text_, encoding="utf-8")
    return path


SHORTER_DX12 = ("Dx12:  {within: PT2H,", "Dx12:  {within: PT1H,")
WIDER_AMBER = ("amber_within: PT1H ", "amber_within: PT3H ")


class Week:
    """A stored week of BNSSG referrals; `dx12` and `option2` map each case's label to its Task id."""

    def __init__(self, client: Any, clock: FixedClock) -> None:
        self.client, self.clock = client, clock
        self.tasks: dict[str, str] = {}

    def case(self, label: str, fixture: str, at: datetime) -> None:
        body = fixture_json(fixture) | {"case_id": f"WHATIF-{label}", "call_time": at.isoformat()}
        self.clock.set(at + timedelta(minutes=1))
        reply = self.client.post("/ingest/nhs111", content=json.dumps(body), headers={"Content-Type": "application/json"})
        assert reply.status_code == 201, reply.text
        self.tasks[label] = f"Task/{task_of(reply.json())['id']}"


@pytest.fixture
def week(client: Any, clock: FixedClock) -> Week:
    stored = Week(client, clock)
    for day in range(7):  # 23..29 November: a Dx12 and a 6-hour case a day, all long breached by END
        start = datetime(2026, 11, 23, 9, 0, tzinfo=UTC) + timedelta(days=day)
        stored.case(f"dx12-day{day}", "option1-dx12.case.json", start)
        stored.case(f"option2-day{day}", "option2-standard.case.json", start + timedelta(hours=1))
    clock.set(datetime(2026, 11, 23, 14, 5, tzinfo=UTC))  # one BaRS Dx13 and one MHPL call: neither candidate touches them
    bars = client.post("/fhir/$process-message", content=fixture_bytes("bars-dx13-self-harm-flag.bundle.json"), headers=bars_headers())
    assert bars.status_code == 200, bars.text
    mhpl = client.post("/ingest/mhpl", content=(Path(__file__).parent.parent / "fixtures/mhpl/police-call.mhpl.json").read_bytes())
    assert mhpl.status_code == 201, mhpl.text
    # the last morning, each case placed against END (12:00) and the live thresholds (amber within 1 h)
    stored.case("option2-amber", "option2-standard.case.json", END - timedelta(hours=5))  # breach 13:00: 1 h left, amber
    stored.case("option2-2h", "option2-standard.case.json", END - timedelta(hours=4))  # breach 14:00: 2 h left, green
    stored.case("option2-5h", "option2-standard.case.json", END - timedelta(hours=1))  # breach 17:00: green
    stored.case("dx12-30m", "option1-dx12.case.json", END - timedelta(minutes=90))  # breach 12:30: amber
    stored.case("dx12-1h", "option1-dx12.case.json", END - timedelta(hours=1))  # breach 13:00: amber
    stored.case("dx12-1h45", "option1-dx12.case.json", END - timedelta(minutes=15))  # breach 13:45: green
    clock.set(END)
    return stored


def _run(database_url: str, *args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(cli, list(args), env={"DATABASE_URL": database_url, **(env or {})}, catch_exceptions=False)


def _snapshot(database_url: str) -> dict[str, Any]:
    """Every table's row count, and every resource's version: what a read-only replay must leave as it was."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            counts = {t: connection.execute(text(f'SELECT COUNT(*) FROM "{t}"')).scalar_one() for t in inspect(engine).get_table_names()}
            versions = connection.execute(select(func.sum(ResourceRow.version_id), func.max(ResourceRow.last_updated))).one()
    finally:
        engine.dispose()
    return {"counts": counts, "versions": tuple(versions)}


def _what_if(database_url: str, candidate: Path) -> dict[str, Any]:
    result = _run(database_url, "rules", "what-if", str(candidate), "--since", "30d", "--format", "json", "--now", END.isoformat())
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def _with(report: dict[str, Any], *kinds: str) -> set[str]:
    return {c["case"] for c in report["cases"] if set(kinds) & set(c["changes"])}


def test_shorter_dx12_window_names_exactly_the_dx12_cases_and_changes_nothing_CAS_05_CAS_09(
    database_url: str, week: Week, tmp_path: Path
) -> None:
    candidate = _candidate(tmp_path, "bnssg-dx12.yaml", SHORTER_DX12)
    before = _snapshot(database_url)
    report = _what_if(database_url, candidate)
    assert _snapshot(database_url) == before  # read-only: no row, no version changed

    dx12 = {ref for label, ref in week.tasks.items() if label.startswith("dx12")}
    assert _with(report, "breach-time") == dx12
    # at 12:00: 12:30 -> 11:30 (amber -> red), 13:00 -> 12:00 (amber -> red), 13:45 -> 12:45 (green -> amber)
    assert _with(report, "breach-colour") == {week.tasks["dx12-30m"], week.tasks["dx12-1h"], week.tasks["dx12-1h45"]}
    assert report["replayed"] == 22 and report["counts"]["breach-time"] == 10
    case = next(c for c in report["cases"] if c["case"] == week.tasks["dx12-1h45"])
    assert case["before"]["breach_time"] == "2026-11-30T13:45:00Z" and case["after"]["breach_time"] == "2026-11-30T12:45:00Z"
    assert (case["before"]["breach_colour"], case["after"]["breach_colour"]) == ("green", "amber")
    assert "CAS-05" in case["rule_ids"] and "CAS-09" in case["rule_ids"]
    assert case["inputs"] == [{"path": "dispositions.Dx12.within", "live": "PT2H", "candidate": "PT1H"}]
    assert week.tasks["dx12-1h45"] in report["open_cases_changed"]


def test_moved_amber_threshold_names_exactly_the_cases_turning_amber_CAS_09(database_url: str, week: Week, tmp_path: Path) -> None:
    candidate = _candidate(tmp_path, "bnssg-amber.yaml", WIDER_AMBER)
    before = _snapshot(database_url)
    report = _what_if(database_url, candidate)
    assert _snapshot(database_url) == before

    assert _with(report, "breach-time", "priority", "classification") == set()  # intake decisions stand
    # amber within 3 h at 12:00: breach 14:00 and 13:45 turn amber; 13:00 and 12:30 were amber already; 17:00 stays green
    assert _with(report, "breach-colour") == {week.tasks["option2-2h"], week.tasks["dx12-1h45"]}
    case = next(c for c in report["cases"] if c["case"] == week.tasks["option2-2h"])
    assert (case["before"]["breach_colour"], case["after"]["breach_colour"]) == ("green", "amber")
    assert case["rule_ids"] == ["CAS-09"]
    assert case["inputs"] == [{"path": "breach_status.amber_within", "live": "PT1H", "candidate": "PT3H"}]


def test_what_if_as_table_and_csv_name_the_changed_cases_CAS_05(database_url: str, week: Week, tmp_path: Path) -> None:
    candidate = _candidate(tmp_path, "bnssg-dx12.yaml", SHORTER_DX12)
    table = _run(database_url, "rules", "what-if", str(candidate), "--now", END.isoformat())
    assert table.exit_code == 0, table.output
    assert "breach-time     10" in table.stdout and "input dispositions.Dx12.within: PT2H -> PT1H" in table.stdout
    rows = _run(database_url, "rules", "what-if", str(candidate), "--format", "csv", "--now", END.isoformat()).stdout.splitlines()
    assert rows[0].startswith("case,channel,received_at,open,changes") and len(rows) == 1 + 10
    assert "9990000042" not in table.stdout + "\n".join(rows)  # cases are named by Task id, never by patient
    wrong = _run(database_url, "rules", "what-if", str(candidate), "--service", "bsw")
    assert wrong.exit_code == 2 and "is the rule file of bnssg" in wrong.stderr


def test_check_prints_each_changed_value_against_the_live_version(database_url: str, tmp_path: Path) -> None:
    candidate = _candidate(tmp_path, "bnssg-dx12.yaml", SHORTER_DX12, WIDER_AMBER)
    result = _run(database_url, "rules", "check", str(candidate))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "bnssg-dx12.yaml: valid cas-queue rule file for bnssg, version 2026.12.3 -> 2026.12.99"
    assert [line.split() for line in lines[2:]] == [
        ["breach_status.amber_within", "PT1H", "->", "PT3H"],
        ["dispositions.Dx12.within", "PT2H", "->", "PT1H"],
        ["version", "2026.12.3", "->", "2026.12.99"],
    ]


def test_invalid_candidate_is_refused_with_the_errors_start_up_gives(database_url: str, tmp_path: Path) -> None:
    bad = _candidate(
        tmp_path, "bnssg-bad.yaml", ("amber_within: PT1H ", "amber_within: soon "), ("Dx12:  {within: PT2H,", "DX12:  {within: PT2H,")
    )
    live = tmp_path / "live"
    shutil.copytree(DEFAULT_RULES_DIR, live)
    shutil.copy(bad, live / "bnssg.yaml")
    with pytest.raises(RuleFileError) as start_up:
        create_app(gateway_settings(database_url, rules_dir=live), FixedClock(END))
    for command in ("check", "what-if"):
        result = _run(database_url, "rules", command, str(bad))
        assert result.exit_code == 2 and result.stdout == ""
        assert result.stderr.strip() == f"refused: {start_up.value}"
    assert "breach_status.amber_within" in str(start_up.value) and "DX12" in str(start_up.value)


def test_activation_is_recorded_audited_and_applies_to_new_decisions_only_CAS_05(
    database_url: str, client: Any, clock: FixedClock, tmp_path: Path
) -> None:
    live = tmp_path / "services"
    shutil.copytree(DEFAULT_RULES_DIR, live)
    env = {"IAP_RULES_DIR": str(live)}
    week = Week(client, clock)
    week.case("before", "option1-dx12.case.json", END - timedelta(hours=2))
    candidate = _candidate(tmp_path, "bnssg-dx12.yaml", SHORTER_DX12)

    done = _run(database_url, "rules", "activate", str(candidate), "--by", "Service Manager A", "--now", END.isoformat(), env=env)
    assert done.exit_code == 0, done.output
    assert done.stdout.startswith("activated bnssg cas-queue 2026.12.99 by Service Manager A at 2026-11-30T12:00:00")
    assert (live / "bnssg.yaml").read_text(encoding="utf-8") == candidate.read_text(encoding="utf-8")
    history = _run(database_url, "rules", "history", env=env)
    assert "bnssg cas-queue 2026.12.99\tService Manager A" in history.stdout
    # RuleFileVersion/1 keeps the replaced 2026.12.3's content (open cases it decided follow it: test_rules_versions.py)
    events = client.get("/fhir/AuditEvent", params={"entity": "RuleFileVersion/2"}).json()
    assert [e["resource"]["outcomeDesc"] for e in events.get("entry", [])] == [
        "rule file bnssg cas-queue 2026.12.99 activated by Service Manager A (was 2026.12.3)"
    ]
    # the same version again with other content is refused, and nothing changes
    other = _candidate(tmp_path, "bnssg-other.yaml", WIDER_AMBER)
    refused = _run(database_url, "rules", "activate", str(other), "--by", "Someone", env=env)
    assert refused.exit_code == 2 and "give the changed file a new version" in refused.stderr
    assert (live / "bnssg.yaml").read_text(encoding="utf-8") == candidate.read_text(encoding="utf-8")

    # a restarted gateway decides new cases with the new version; the open case keeps its decision and its version
    restarted = create_app(gateway_settings(database_url, rules_dir=live), clock)
    try:
        from fastapi.testclient import TestClient

        with TestClient(restarted, headers=bearer(add_test_client(restarted, ALL_SCOPES))) as again:
            after = Week(again, clock)
            after.case("after", "option1-dx12.case.json", END + timedelta(minutes=10))
            old = again.get(f"/fhir/{week.tasks['before']}").json()
            new = again.get(f"/fhir/{after.tasks['after']}").json()
            assert old["restriction"]["period"]["end"] == "2026-11-30T12:00:00Z"  # 2 h, decided under 2026.12.3
            assert new["restriction"]["period"]["end"] == "2026-11-30T13:10:00Z"  # 1 h, under 2026.12.99
            explain_old = _versions(again.get(f"/fhir/{week.tasks['before']}/$explain").json())
            explain_new = _versions(again.get(f"/fhir/{after.tasks['after']}/$explain").json())
    finally:
        restarted.state.engine.dispose()
    assert explain_old == [
        "bnssg cas-queue 2026.12.3: the rule file shipped with the gateway (not activated with `iap-gateway rules activate`)"
    ]
    assert explain_new == ["bnssg cas-queue 2026.12.99: activated 2026-11-30T12:00:00Z by Service Manager A"]


def _versions(explained: dict[str, Any]) -> list[str]:
    return [p["valueString"] for p in explained["parameter"] if p["name"] == "rules-version"]


def test_pathway_candidate_moving_the_tt08_clock_names_the_referral_TT_08(database_url: str, client: Any, tmp_path: Path) -> None:
    base = Path(__file__).parent.parent / "gateway/pathways/rules/pathways/north-essex-north-east.yaml"
    text_ = base.read_text(encoding="utf-8")
    live_version = text_.split('version: "', 1)[1].split('"', 1)[0]
    candidate = tmp_path / "north-essex-north-east.yaml"
    candidate.write_text(
        text_.replace(f'version: "{live_version}"', 'version: "2099.1.1"')
        + 'clocks:\n  tt-initial-assessment: {rule: TT-08, title: "Initial assessment within 21 days", after: P21D,'
        " report_after: {national: P42D}, on_due: breach}\n",
        encoding="utf-8",
    )
    referral = (Path(__file__).parent.parent / "fixtures/pathways/tt-gp-referral-step-3.servicerequest.json").read_bytes()
    reply = client.post("/fhir/ServiceRequest/$route", content=referral, headers={"Content-Type": "application/fhir+json"})
    assert reply.status_code == 201, reply.text
    before = _snapshot(database_url)
    report = json.loads(_run(database_url, "rules", "what-if", str(candidate), "--format", "json", "--now", "2026-11-23T12:00:00Z").stdout)
    assert _snapshot(database_url) == before
    assert report["replayed"] == 1 and report["counts"] == {"clock": 1}
    (case,) = report["cases"]
    assert case["rule_ids"] == ["TT-08"] and case["open"] is True
    assert case["before"]["clocks"].startswith("tt-initial-assessment=") and case["after"]["clocks"] != case["before"]["clocks"]
    # the referral's $explain names the version that routed it, and that it was not activated through the CLI
    assert _versions(client.get(f"/fhir/{case['case']}/$explain").json()) == [
        f"north-essex-north-east pathway {live_version}: the rule file shipped with the gateway"
        " (not activated with `iap-gateway rules activate`)"
    ]


def test_the_replay_transaction_refuses_any_write(app: Any) -> None:
    """What-if's guarantee is the database's, not only the code's: its transaction cannot write (and is rolled back)."""
    from sqlalchemy.exc import DBAPIError

    from gateway.rules.whatif import read_only

    with pytest.raises(DBAPIError), read_only(app.state.engine) as connection:
        connection.execute(text("UPDATE resources SET version_id = version_id + 1"))
    with app.state.engine.begin() as connection:  # the pooled connection writes again for everyone else
        connection.execute(text("DELETE FROM resources WHERE 1 = 0"))


def test_a_sender_profile_has_no_version_and_each_activation_is_kept_by_content(database_url: str, tmp_path: Path) -> None:
    from gateway.epr.rules.sender_schema import DEFAULT_SENDERS_DIR

    live = tmp_path / "senders"
    shutil.copytree(DEFAULT_SENDERS_DIR, live)
    env = {"IAP_SENDERS_DIR": str(live)}
    original = (DEFAULT_SENDERS_DIR / "rio-awp.yaml").read_text(encoding="utf-8")
    assert "time_zone: Europe/London" in original
    changed = tmp_path / "rio-awp-candidate.yaml"
    changed.write_text(original.replace("name: AWP RiO", "name: AWP RiO (new interface)"), encoding="utf-8")
    check = _run(database_url, "rules", "check", str(changed), env=env)
    assert check.exit_code == 0, check.output
    assert check.stdout.splitlines()[0] == "rio-awp-candidate.yaml: valid sender rule file for rio-awp"
    assert check.stdout.splitlines()[2].split() == ["name", "AWP", "RiO", "->", "AWP", "RiO", "(new", "interface)"]
    for path in (changed, DEFAULT_SENDERS_DIR / "rio-awp.yaml"):  # forward, then back: two activations
        done = _run(database_url, "rules", "activate", str(path), "--by", "Integration lead", "--now", END.isoformat(), env=env)
        assert done.exit_code == 0, done.output
    assert (live / "rio-awp.yaml").read_text(encoding="utf-8") == original
    assert len(_run(database_url, "rules", "history", "--service", "rio-awp", env=env).stdout.splitlines()) == 2
    refused = _run(database_url, "rules", "what-if", str(changed), env=env)
    assert refused.exit_code == 2 and "replays CAS queue and pathway rule files" in refused.stderr
