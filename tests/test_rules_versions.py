"""Open cases follow the rule file version that decided them; running gateways take an activation (issue 37).

Over HTTP and the CLI with an injected clock: after `rules activate` widens the amber threshold, a case decided before
keeps its version's colour on /queue and /queue/summary and its safety calls (CAS-09, CAS-02), a case decided after
gets the new one, until a person runs `rules apply-to-open`. Two gateways on one PostgreSQL, each with its own rules
folder and clock, take the activation within IAP_RULES_RELOAD_SECONDS without restart; a restarted one keeps it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from gateway.api.app import create_app
from gateway.cas.rules.schema import DEFAULT_RULES_DIR
from gateway.cli import app as cli
from gateway.platform.clock import FixedClock
from tests.conftest import ALL_SCOPES, add_test_client, bearer, empty_postgres, fixture_json, gateway_settings, task_of

CALL = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)  # option2-standard: a 6-hour window, breach at 12:00
BREACH = CALL + timedelta(hours=6)
OLD, NEW = "bnssg cas-queue 2026.12.3", "bnssg cas-queue 2026.12.99"


def _candidate(tmp_path: Path, version: str = "2026.12.99") -> Path:
    """The live bnssg file with amber widened from 1 h to 3 h, as `version`."""
    text = (DEFAULT_RULES_DIR / "bnssg.yaml").read_text(encoding="utf-8")
    for old, new in (('version: "2026.12.3"', f'version: "{version}"'), ("amber_within: PT1H ", "amber_within: PT3H ")):
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / f"bnssg-{version}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _folder(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    shutil.copytree(DEFAULT_RULES_DIR, folder)
    return folder


def _run(database_url: str, folder: Path, *args: str) -> Any:
    env = {"DATABASE_URL": database_url, "IAP_RULES_DIR": str(folder)}
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


@pytest.fixture
def gateway(database_url: str, tmp_path: Path) -> Iterator[tuple[TestClient, FixedClock, Path]]:
    folder = _folder(tmp_path, "live")
    clock = FixedClock(CALL)
    app = create_app(gateway_settings(database_url, rules_dir=folder), clock)
    with TestClient(app, headers=bearer(add_test_client(app, ALL_SCOPES))) as client:
        yield client, clock, folder
    app.state.engine.dispose()


def _ingest(client: TestClient, clock: FixedClock, case_id: str, at: datetime) -> dict[str, Any]:
    clock.set(at)
    body = fixture_json("option2-standard.case.json") | {"case_id": case_id, "call_time": CALL.isoformat()}
    reply = client.post("/ingest/nhs111", content=json.dumps(body), headers={"Content-Type": "application/json"})
    assert reply.status_code == 201, reply.text
    return task_of(reply.json())


def _labels(task: dict[str, Any], code: str = "rule-set") -> list[str]:
    return [i["valueString"] for i in task.get("input", []) if i["type"]["coding"][0]["code"] == code]


def _colours(client: TestClient) -> dict[str, str]:
    reply = client.get("/queue", params={"service": "bnssg"})
    assert reply.status_code == 200, reply.text
    return {entry["task"]: entry["breach_status"] for entry in reply.json()["entries"]}


def _summary(client: TestClient) -> dict[str, int]:
    reply = client.get("/queue/summary", params={"service": "bnssg"})
    assert reply.status_code == 200, reply.text
    return {k: v for k, v in reply.json()["by_breach_status"].items() if v}


def test_open_case_keeps_its_versions_colour_and_safety_calls_until_a_person_applies_another_CAS_09_CAS_02(
    database_url: str, gateway: tuple[TestClient, FixedClock, Path], tmp_path: Path
) -> None:
    client, clock, folder = gateway
    old = _ingest(client, clock, "VERSIONS-OLD", CALL + timedelta(minutes=1))
    done = _run(database_url, folder, "rules", "activate", str(_candidate(tmp_path)), "--by", "Service Manager A")
    assert done.exit_code == 0, done.output
    new = _ingest(client, clock, "VERSIONS-NEW", CALL + timedelta(minutes=3))  # 2 minutes on: the gateway took it
    assert (_labels(old), _labels(new)) == ([OLD], [NEW])
    assert old["restriction"] == new["restriction"]  # same call, same window: breach at 12:00 for both
    old_ref, new_ref = f"Task/{old['id']}", f"Task/{new['id']}"

    clock.set(BREACH - timedelta(hours=2))  # 2 h to breach: green under amber 1 h (old), amber under amber 3 h (new)
    assert _colours(client) == {old_ref: "green", new_ref: "amber"}
    assert _summary(client) == {"green": 1, "amber": 1}
    moment = clock.now().isoformat()
    ticked = _run(database_url, folder, "tick", "--now", moment)
    assert ticked.exit_code == 0, ticked.output
    assert "tick: 1 safety call(s) created" in ticked.stderr  # the new case's alone (CAS-09)
    # what-if of the same thresholds again: before is each case as the queue shows it, so the old case alone turns amber
    what_if = _run(database_url, folder, "rules", "what-if", str(_candidate(tmp_path, "2026.12.100")), "--format", "json", "--now", moment)
    assert what_if.exit_code == 0, what_if.output
    assert {c["case"] for c in json.loads(what_if.stdout)["cases"] if "breach-colour" in c["changes"]} == {old_ref}

    refused = _run(database_url, folder, "rules", "apply-to-open", "2027.1", "--service", "bnssg", "--by", "Service Manager A")
    assert refused.exit_code == 2 and "bnssg cas-queue 2027.1 was never activated" in refused.stderr
    nobody = _run(database_url, folder, "rules", "apply-to-open", "2026.12.99", "--service", "bnssg", "--by", " ")
    assert nobody.exit_code == 2 and "needs the name of the person" in nobody.stderr
    assert _colours(client) == {old_ref: "green", new_ref: "amber"}  # nothing changed by either

    args = ("rules", "apply-to-open", "2026.12.99", "--service", "bnssg", "--by", "Service Manager A", "--now", moment)
    applied = _run(database_url, folder, *args)
    assert applied.exit_code == 0, applied.output
    assert applied.stdout.splitlines() == [f"{old_ref}\t{OLD} -> {NEW}"]  # the one case it changed
    assert _colours(client) == {old_ref: "amber", new_ref: "amber"}
    assert _summary(client) == {"amber": 2}
    again = _run(database_url, folder, "tick", "--now", moment)
    assert "tick: 1 safety call(s) created" in again.stderr  # now the old case's

    stored = client.get(f"/fhir/{old_ref}").json()
    assert (_labels(stored), _labels(stored, "rule-set-applied")) == ([OLD], [NEW])  # what decided it stays named
    assert stored["restriction"] == old["restriction"] and stored["priority"] == old["priority"]  # not re-decided
    audit = client.get("/fhir/AuditEvent", params={"entity": old_ref}).json()
    described = [e["resource"]["outcomeDesc"] for e in audit.get("entry", [])]
    assert f"1 open case(s) of bnssg follow {NEW}, applied by Service Manager A" in described


def test_a_version_shipped_before_history_is_kept_when_first_replaced_CAS_09(
    database_url: str, gateway: tuple[TestClient, FixedClock, Path], tmp_path: Path
) -> None:
    client, clock, folder = gateway
    _run(database_url, folder, "rules", "activate", str(_candidate(tmp_path)), "--by", "Service Manager A")
    history = _run(database_url, folder, "rules", "history").stdout.splitlines()
    assert [line.split("\t")[1] for line in history] == [NEW]  # the kept content is not listed as an activation
    # a gateway started afterwards, with the new file in its folder, still colours an old case by the old version
    old = _ingest(client, clock, "VERSIONS-SHIPPED", CALL + timedelta(seconds=10))  # within 30 s: still the old version
    assert _labels(old) == [OLD]
    restarted = create_app(gateway_settings(database_url, rules_dir=folder), FixedClock(BREACH - timedelta(hours=2)))
    try:
        with TestClient(restarted, headers=bearer(add_test_client(restarted, ALL_SCOPES, name="restarted"))) as other:
            assert _colours(other) == {f"Task/{old['id']}": "green"}
    finally:
        restarted.state.engine.dispose()


@pytest.fixture
def shared_pg(pg_url: str) -> str:
    empty_postgres(pg_url)
    return pg_url


def test_two_gateways_on_one_postgresql_take_an_activation_within_the_reload_interval_CAS_05(shared_pg: str, tmp_path: Path) -> None:
    folders = [_folder(tmp_path, "a"), _folder(tmp_path, "b")]  # B's folder never gets the file: it reads the history
    clocks = [FixedClock(CALL), FixedClock(CALL)]
    apps = [create_app(gateway_settings(shared_pg, rules_dir=f, rules_reload_seconds=30), c) for f, c in zip(folders, clocks, strict=True)]
    try:
        clients = [TestClient(app, headers=bearer(add_test_client(app, ALL_SCOPES, name=f"replica-{i}"))) for i, app in enumerate(apps)]
        done = _run(shared_pg, folders[0], "rules", "activate", str(_candidate(tmp_path)), "--by", "Service Manager A")
        assert done.exit_code == 0, done.output
        for index, client in enumerate(clients):
            early = _ingest(client, clocks[index], f"REPLICA-{index}-EARLY", CALL + timedelta(seconds=29))
            late = _ingest(client, clocks[index], f"REPLICA-{index}-LATE", CALL + timedelta(seconds=30))
            assert (_labels(early), _labels(late)) == ([OLD], [NEW]), index
            assert NEW in client.get("/readyz").json()["rule_sets"]
        clocks[1].set(BREACH - timedelta(hours=2))
        colours = _colours(clients[1])
        assert sorted(colours.values()) == ["amber", "amber", "green", "green"]  # each case by its own version
    finally:
        for app in apps:
            app.state.engine.dispose()
    restarted = create_app(gateway_settings(shared_pg, rules_dir=folders[1]), FixedClock(CALL + timedelta(hours=1)))
    try:  # B restarted with its stale folder: the history's later activation is live at start
        with TestClient(restarted, headers=bearer(add_test_client(restarted, ALL_SCOPES, name="replica-b2"))) as client:
            assert _labels(_ingest(client, restarted.state.clock, "REPLICA-B2", CALL + timedelta(hours=1))) == [NEW]
    finally:
        restarted.state.engine.dispose()
