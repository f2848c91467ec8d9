"""The `iap-gateway` command as a user runs it."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, ROOT, bearer, free_port

CLI = [sys.executable, "-m", "gateway.cli"]


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=ROOT, env={**os.environ, **(env or {})}, timeout=120)


@pytest.mark.parametrize("name", ["option2-standard.case.json", "bars-dx13-self-harm-flag.bundle.json"])
def test_map_prints_the_fhir_bundle_an_input_becomes(name: str) -> None:
    result = _run("map", f"fixtures/nhs111/{name}")
    assert result.returncode == 0, result.stderr
    bundle = json.loads(result.stdout)
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    assert [e["resource"]["resourceType"] for e in bundle["entry"]][-1] == "Task"
    assert all(e["fullUrl"] == f"urn:uuid:{e['resource']['id']}" for e in bundle["entry"])


def test_map_prints_the_bundle_an_mhpl_call_becomes_with_the_callers_timeframe_CAS_06() -> None:
    result = _run("map", "--mhpl", "--received-at", "2026-11-23T12:00:00+00:00", "fixtures/mhpl/police-call.mhpl.json")
    assert result.returncode == 0, result.stderr
    bundle = json.loads(result.stdout)
    task = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Task")
    # a police call at 11:30: the police timeframe in the BNSSG rule file is PT1H
    assert task["restriction"]["period"] == {"start": "2026-11-23T11:30:00Z", "end": "2026-11-23T12:30:00Z"}
    assert "CAS-06: MHPL call from police, PT1H timeframe" in json.dumps(task)


def test_map_of_refused_input_prints_the_operation_outcome_and_fails(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text((FIXTURES / "option1-dx12.case.json").read_text().replace('"DX12"', '"Dx0122"'))
    result = _run("map", str(bad))
    assert result.returncode == 1 and result.stdout == ""
    outcome = json.loads(result.stderr)
    assert outcome["issue"][0]["expression"] == ["pathways.dx"] and "Dx0122" in outcome["issue"][0]["diagnostics"]


@pytest.mark.parametrize("args", [["clients", "list"], ["migrate"], ["serve", "--port", "0"]])
def test_a_command_on_an_unreachable_database_says_so_in_one_line_and_exits_75_to_be_run_again(args: list[str]) -> None:
    """No 400-line traceback: one line naming the driver's reason, and EX_TEMPFAIL for cron, systemd or a shell."""
    port = free_port()  # nothing listens there: a server that is down
    result = _run(*args, env={"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{port}/iap"})
    assert result.returncode == 75, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("iap-gateway: the database is unavailable (OperationalError: connection failed: ")
    assert f"port {port} failed: Connection refused" in line
    assert line.endswith(
        "; check DATABASE_URL if the reason names a wrong database, role or password, else run the command again once it is back"
    )


@pytest.mark.parametrize("args", [["clients", "list"], ["migrate"], ["serve", "--port", "0"]])
@pytest.mark.parametrize("missing", ["database", "role"])
def test_a_database_or_role_the_server_does_not_have_is_a_setting_to_fix_and_exits_78(args: list[str], missing: str) -> None:
    """Not 75: the database will not appear by waiting, and systemd told "try later" would loop for ever."""
    url = {
        "database": "postgresql://postgres:not-shown@127.0.0.1:5432/iap_no_such_database",
        "role": "postgresql://iap_no_such_role:not-shown@127.0.0.1:5432/postgres",
    }[missing]
    result = _run(*args, env={"DATABASE_URL": url})
    assert result.returncode == 78, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("iap-gateway: the database refused the connection (OperationalError: connection failed: ")
    assert f'{missing} "iap_no_such_{missing}" does not exist' in line and "not-shown" not in line
    assert line.endswith("; check DATABASE_URL: the database and role it names must exist on that server")


def test_a_postgres_url_as_tools_print_it_means_postgresql_through_psycopg(tmp_path: Path) -> None:
    """`postgres://` (Heroku, RDS, pg_dump) and `postgresql://` both reach PostgreSQL, not NoSuchModuleError."""
    from tests.conftest import PG_ADMIN_URL

    server = PG_ADMIN_URL.split("://", 1)[1]
    for scheme in ("postgres", "postgresql", "POSTGRES"):
        result = _run("migrate", env={"DATABASE_URL": f"{scheme}://{server}"})
        assert result.returncode == 0 and result.stderr.strip() == "database is at the newest schema", (scheme, result.stderr)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("hunter2", "DATABASE_URL is not a URL (no scheme://)"),
        ("postgresql://iap:hunter2@db.example:port/iap", "DATABASE_URL could not be read (check its port and special characters)"),
        ("mysql://iap:hunter2@db.example/iap", "DATABASE_URL names a database the gateway does not use (mysql://)"),
        ("postgresql+psycopg2://iap:hunter2@db.example/iap", "DATABASE_URL names a database the gateway does not use"),
        ("postgresql://iap:hunter2@db.example:5432", "DATABASE_URL names no database (the path after host:port)"),
    ],
)
def test_a_malformed_database_url_says_what_is_wrong_without_quoting_it_and_exits_78(url: str, reason: str) -> None:
    result = _run("migrate", env={"DATABASE_URL": url})
    assert result.returncode == 78, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"iap-gateway: {reason}") and "hunter2" not in line
    assert line.endswith("expected postgresql://user:password@host:5432/database or sqlite:///path/to/file.db") or "psycopg 3" in line


def test_a_setting_settings_refuses_is_named_in_one_line_without_its_value_and_exits_78() -> None:
    result = _run("migrate", env={"IAP_MLLP_PORT": "hunter2", "DATABASE_URL": "sqlite://"})
    assert result.returncode == 78, result.stderr
    assert result.stderr.splitlines() == [
        "iap-gateway: IAP_MLLP_PORT: Input should be a valid integer, unable to parse string as an integer"
    ]


def test_report_plot_without_the_plot_extra_says_how_to_install_it_before_any_work(tmp_path: Path) -> None:
    """matplotlib is the `plot` extra (docs/install-weight.md): without it, --plot is refused at once, in one line."""
    blocked = "import sys; sys.modules['matplotlib'] = None; from gateway.cli import main; sys.argv[0] = 'iap-gateway'; main()"
    png = tmp_path / "waitlist.png"
    result = subprocess.run(
        [sys.executable, "-c", blocked, "report", "waitlist", "--demo", "--plot", str(png)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 1 and result.stdout == "" and not png.exists()
    assert result.stderr.splitlines() == [
        "iap-gateway: --plot needs matplotlib, which is not installed: pip install 'iap-gateway[plot]' (about 120 MB); "
        "the table, JSON and CSV need nothing more"
    ]


@pytest.mark.parametrize("args", [["clients", "list"], ["migrate"], ["serve", "--port", "0"], ["demo"]])
@pytest.mark.parametrize("unusable", ["folder missing", "not a database"])
def test_a_sqlite_file_that_cannot_be_used_is_named_in_one_line_and_exits_78_as_a_setting_to_fix(
    args: list[str], unusable: str, tmp_path: Path
) -> None:
    """Not 75: running it again would fail the same way, and a scheduler or systemd told "try later" would loop for
    ever (systemd's `RestartPreventExitStatus=78`). The line names the file as an absolute path and what to check."""
    if unusable == "folder missing":
        database, reason = tmp_path / "no-such-folder" / "gateway.db", "OperationalError: unable to open database file"
    else:
        database, reason = tmp_path / "notes.txt", "DatabaseError: file is not a database"
        database.write_text("a text file, not a database\n" * 100)
    result = _run(*args, env={"DATABASE_URL": f"sqlite:///{database}"})
    assert result.returncode == 78, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"iap-gateway: the SQLite database {database} cannot be used ({reason}); check DATABASE_URL: ")
    if unusable == "folder missing":
        assert not database.parent.exists()  # no folder made on the way
    else:
        assert database.read_text().startswith("a text file")  # the file left as it was


def test_a_database_error_that_is_not_an_outage_ends_a_command_with_its_type_only_and_exits_1(tmp_path: Path) -> None:
    """Its message is withheld: a database error can quote a row's values (as this trigger's does, the way PostgreSQL's
    `DETAIL: Key (...)=(...)` would)."""
    database = tmp_path / "refusing.db"
    env = {"DATABASE_URL": f"sqlite:///{database}"}
    assert _run("migrate", env=env).returncode == 0
    with sqlite3.connect(database) as connection:
        connection.execute(
            "CREATE TRIGGER refuse_nhs_numbers BEFORE INSERT ON resource_identifiers WHEN NEW.system LIKE '%nhs-number'"
            " BEGIN SELECT RAISE(ABORT, 'Key (value)=(9990000026) refused'); END"
        )
    result = _run("demo", env=env)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "iap-gateway: a database error ended the command (IntegrityError; its message is withheld: it can quote stored values)"
    )
    assert "Traceback" not in result.stderr and "9990000026" not in result.stderr


def test_demo_loads_the_fixtures_once_however_often_it_runs(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'demo.db'}"}
    first = _run("demo", env=env)
    assert first.returncode == 0, first.stderr
    cases = len(list(FIXTURES.glob("*.json"))) + len(list((FIXTURES.parent / "mhpl").glob("*.json")))
    assert f"demo: {cases} new CAS case(s) (" in first.stderr and "; 60 new Talking Therapies referral(s)" in first.stderr
    second = _run("demo", env=env)  # later: its times differ, so the cases are left to age, not refused as reused ids
    assert second.returncode == 0, second.stderr
    assert f"demo: 0 new CAS case(s); {cases} loaded earlier" in second.stderr and "; 0 new Talking Therapies" in second.stderr
    assert "warning" not in second.stderr


def test_serve_starts_and_answers_on_http(tmp_path: Path) -> None:
    import time

    import httpx

    port = free_port()
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'serve.db'}", "IAP_MLLP_PORT": "0"}
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen([*CLI, "serve", "--port", str(port), "--demo"], cwd=ROOT, env=env, stdout=log, stderr=log)
    try:
        wait_healthy(port)
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/queue", timeout=5).status_code == 401  # nothing runs unauthenticated, even the demo
        key = demo_key((tmp_path / "serve.log").read_text())
        queue = httpx.get(f"{base}/queue", headers=bearer(key), timeout=5).json()
        assert queue["count"] >= 8
        # the safety-call worker started with serve: the demo's amber and red cases have had their safety calls (CAS-09)
        deadline = time.monotonic() + 30
        calls = 0
        while time.monotonic() < deadline and not calls:
            calls = httpx.get(f"{base}/fhir/Task", params={"status": "requested"}, headers=bearer(key), timeout=5).json()["total"]
            time.sleep(0.2)
        assert calls >= 1
    finally:
        server.terminate()
        server.wait(timeout=20)
        log.close()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_on_a_busy_mllp_port_fails_in_one_line_rather_than_share_it(workers: str, tmp_path: Path) -> None:
    """A gateway already listening there (SO_REUSEPORT, as the workers of one `serve` share it) is not joined: RiO's
    messages would be split between two databases. The start fails as a busy HTTP port fails it."""
    import socket

    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        busy = other.getsockname()[1]
        env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'serve.db'}", "IAP_MLLP_PORT": str(busy), "IAP_TICK_SECONDS": "0"}
        result = _run("serve", "--port", str(free_port()), "--workers", workers, env=env)
    assert result.returncode == 1, result.stderr
    line = result.stderr.splitlines()[-1]  # after the migrations' lines
    assert line.startswith(f"iap-gateway: the MLLP port 127.0.0.1:{busy} (IAP_MLLP_HOST, IAP_MLLP_PORT) is in use by another program")


def wait_healthy(port: int, seconds: float = 60) -> None:
    import time

    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(f"nothing healthy on port {port} after {seconds} s")


def demo_key(output: str) -> str:
    """The demo operator's API key, as `serve --demo` prints it once to the terminal."""
    line = next(line for line in output.splitlines() if "export IAP_TOKEN=" in line)
    return line.split("export IAP_TOKEN=", 1)[1].strip()


def test_score_prints_the_observations_and_the_risk_flag_for_a_response() -> None:
    result = _run("score", "fixtures/measures/phq-9-item9-risk.qr.json", "--received-at", "2026-11-23T14:00:00Z")
    assert result.returncode == 0, result.stderr
    bundle = json.loads(result.stdout)
    kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert kinds == ["QuestionnaireResponse", "Observation", "Flag"]
    observation = bundle["entry"][1]["resource"]
    assert observation["code"]["coding"][0]["code"] == "44261-6" and observation["valueQuantity"]["value"] == 11
    assert observation["interpretation"][0]["text"] == "Moderate"


def test_score_of_a_bad_response_prints_the_operation_outcome(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    data = json.loads((ROOT / "fixtures/measures/phq-9-lhc-forms.qr.json").read_text())
    data["questionnaire"] = "https://example.org/Questionnaire/unknown"
    bad.write_text(json.dumps(data))
    result = _run("score", str(bad))
    assert result.returncode == 1
    assert json.loads(result.stderr)["issue"][0]["expression"] == ["QuestionnaireResponse.questionnaire"]
