"""`iap-gateway rules ...`: check a candidate rule file, preview it on stored traffic, activate it, its history (issue 37)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from common.datetimes import parse_source_datetime

app = typer.Typer(no_args_is_help=True, help="Rule files: check a candidate, preview it on real traffic (what-if), activate it.")

CandidateFile = Annotated[Path, typer.Argument(help="The candidate rule file (YAML: CAS queue, pathway or sender profile).")]
Now = Annotated[str | None, typer.Option(help="The time to work at (ISO 8601 with offset); default now.")]


def _clock(now: str | None) -> Any:
    from gateway.platform.clock import FixedClock, SystemClock

    return FixedClock(parse_source_datetime(now)) if now else SystemClock()


def _candidate(path: Path, settings: Any) -> Any:
    """The candidate as start-up would take it, or its errors (start-up's own text) and exit 2."""
    from gateway.cas.rules.schema import RuleFileError
    from gateway.rules.candidate import load_candidate

    try:
        return load_candidate(path, settings)
    except RuleFileError as error:
        typer.echo(f"refused: {error}", err=True)
        raise typer.Exit(code=2) from None


@app.command("check")
def rules_check(path: CandidateFile) -> None:
    """Validate a candidate exactly as start-up does; print what it changes against the live version, value by value."""
    from gateway.platform.settings import Settings
    from gateway.rules.whatif_format import changes_table

    candidate = _candidate(path, Settings())
    live = candidate.live_version if candidate.live is not None else "(no live file)"
    versions = "" if candidate.kind == "sender" else f", version {live} -> {candidate.version}"  # profiles carry none
    typer.echo(f"{path.name}: valid {candidate.kind} rule file for {candidate.service_id}{versions}")
    changed = [c for c in candidate.changes if c.path != "version"]
    if candidate.kind != "sender" and candidate.live is not None and candidate.version == candidate.live_version and changed:
        typer.echo("warning: values differ under the live version's number; `rules activate` needs a new version", err=True)
    typer.echo(changes_table(candidate.changes))


@app.command("what-if")
def rules_what_if(
    path: CandidateFile,
    since: Annotated[str, typer.Option(help="How far back to replay: 30d, 12h, 2w or an ISO 8601 duration.")] = "30d",
    service: Annotated[str | None, typer.Option(help="The service whose traffic to replay (must be the candidate's).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table | csv | json")] = "table",
    now: Now = None,
) -> None:
    """Replay the service's stored messages through the same adapters and rules with the candidate, read-only (nothing
    is written, nothing sent), and compare each decision with the one stored."""
    from gateway.cas.rules.schema import load_rules
    from gateway.pathways.rules.schema import load_pathways
    from gateway.platform.settings import Settings
    from gateway.platform.store.db import make_engine
    from gateway.rules.whatif import parse_since, what_if
    from gateway.rules.whatif_format import as_csv, as_json, as_table

    if fmt not in ("table", "csv", "json"):
        raise typer.BadParameter("--format is table, csv or json")
    try:
        window = parse_since(since)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    settings = Settings()
    candidate = _candidate(path, settings)
    if service is not None and service != candidate.service_id:
        typer.echo(f"refused: {path.name} is the rule file of {candidate.service_id}, not {service}", err=True)
        raise typer.Exit(code=2)
    if candidate.kind not in ("cas-queue", "pathway"):
        typer.echo(f"refused: what-if replays CAS queue and pathway rule files; {path.name} is a {candidate.kind} profile", err=True)
        raise typer.Exit(code=2)
    live = load_rules(settings.rules_dir) if candidate.kind == "cas-queue" else load_pathways(settings.pathways_dir)
    engine = make_engine(settings.database_url, settings.db_statement_timeout_ms)  # not migrated: what-if writes nothing
    try:
        report = what_if(engine, candidate, live, _clock(now), window)
    finally:
        engine.dispose()
    typer.echo({"table": as_table, "csv": as_csv, "json": as_json}[fmt](report), nl=fmt != "csv")


@app.command("activate")
def rules_activate(
    path: CandidateFile,
    by: Annotated[str, typer.Option(help="Who activates it (a person's name or role; recorded and audited).")],
    now: Now = None,
) -> None:
    """Make a checked candidate the live rule file of its service, recorded (who, when) and audited. Running gateways
    take a CAS file within IAP_RULES_RELOAD_SECONDS (others at their next start); it applies to decisions made from then
    on (open cases keep the version that decided them, colours and safety calls too, unless `apply-to-open`)."""
    from gateway.cas.rules.schema import RuleFileError
    from gateway.cli.common import store_sessions
    from gateway.platform.settings import Settings
    from gateway.rules.history import activate

    settings = Settings()
    candidate = _candidate(path, settings)
    try:
        with store_sessions() as sessions:
            activation = activate(sessions, candidate, by, _clock(now).now(), settings)
    except RuleFileError as error:
        typer.echo(f"refused: {error}", err=True)
        raise typer.Exit(code=2) from None
    typer.echo(f"activated {activation.label} by {activation.activated_by} at {activation.activated_at.isoformat()}")
    taken = (
        "running gateways take it within IAP_RULES_RELOAD_SECONDS"
        if candidate.kind == "cas-queue"
        else "restart the gateway (its instances) to take it"
    )
    typer.echo(f"{taken}; open cases keep the version that decided them (`rules apply-to-open` to change that)", err=True)


@app.command("apply-to-open")
def rules_apply_to_open(
    version: Annotated[str, typer.Argument(help="An activated version of the service's CAS rule file (or the live one).")],
    service: Annotated[str, typer.Option(help="The CAS service whose open cases are to follow it.")],
    by: Annotated[str, typer.Option(help="Who asks for it (a person's name or role; recorded and audited).")],
    now: Now = None,
) -> None:
    """Make the service's open cases follow VERSION's breach colours and safety calls (CAS-09) from now on; each case
    keeps the version that decided it, its priority, classification and breach time. Lists the cases changed."""
    from gateway.cas.rules.schema import RuleFileError, load_rules
    from gateway.cli.common import store_sessions
    from gateway.platform.settings import Settings
    from gateway.rules.apply_open import apply_to_open

    registry = load_rules(Settings().rules_dir)
    try:
        with store_sessions() as sessions:
            label, changed = apply_to_open(sessions, registry, service, version, by, _clock(now).now())
    except RuleFileError as error:
        typer.echo(f"refused: {error}", err=True)
        raise typer.Exit(code=2) from None
    for case in changed:
        typer.echo(f"{case.task}\t{case.was or '(live file)'} -> {label}")
    typer.echo(f"{len(changed)} open case(s) of {service} now follow {label}", err=True)


@app.command("history")
def rules_history(service: Annotated[str | None, typer.Option(help="One service id (default: all).")] = None) -> None:
    """Every activated rule file version: when, by whom, its content's SHA-256."""
    from gateway.cli.common import store_sessions
    from gateway.rules.history import activations

    with store_sessions() as sessions, sessions() as session:
        for a in activations(session, service):
            typer.echo(f"{a.activated_at.isoformat()}\t{a.label}\t{a.activated_by}\t{a.sha256[:12]}")
