"""`iap-gateway report ...`: reports from the gateway's database."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from adapters.problems import GatewayInputError
from common.datetimes import parse_source_datetime

app = typer.Typer(no_args_is_help=True, help="Reports from the gateway's database.")


@app.command("waitlist")
def report_waitlist(
    plot: Annotated[Path | None, typer.Option(help="Also draw the distribution of waits against the 28/42-day lines to this PNG.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="json | csv | table")] = "table",
    service: Annotated[str | None, typer.Option(help="One pathway service id (default: all).")] = None,
    demo: Annotated[bool, typer.Option("--demo", help="Report on the demo wait list in a throw-away database.")] = False,
    now: Annotated[str | None, typer.Option(help="Report as at this time (ISO 8601 with offset); default now.")] = None,
    entered_from: Annotated[
        str | None, typer.Option("--from", help="TT-08 figures: first day of entering treatment counted (YYYY-MM-DD).")
    ] = None,
    entered_to: Annotated[
        str | None, typer.Option("--to", help="TT-08 figures: last day of entering treatment counted (YYYY-MM-DD).")
    ] = None,
) -> None:
    """The Talking Therapies wait-list snapshot (TT-08/TT-09), overdue pathway clocks and the TT-08 treatment targets;
    the same data as GET /reports/waitlist."""
    import tempfile

    from gateway.cli.demo import demo_settings
    from gateway.pathways.waitlist import PlotExtraMissing, plot_waitlist, reporting_period, require_plot, waitlist_csv, waitlist_snapshot
    from gateway.platform.clock import FixedClock, SystemClock
    from gateway.platform.settings import Settings

    if fmt not in ("json", "csv", "table"):
        raise typer.BadParameter("--format must be json, csv or table")
    if plot is not None:
        try:
            require_plot()  # before any work: matplotlib is the optional `plot` extra (docs/install-weight.md)
        except PlotExtraMissing as missing:
            typer.echo(f"iap-gateway: {missing}", err=True)
            raise typer.Exit(1) from None
    moment = parse_source_datetime(now) if now else SystemClock().now()
    try:
        period = reporting_period(entered_from, entered_to)
    except GatewayInputError as error:
        raise typer.BadParameter(f"--{error.problems[0].element}: {error.problems[0].message}") from None
    with tempfile.TemporaryDirectory() as scratch:
        scratch_db = {"DATABASE_URL": f"sqlite:///{scratch}/demo.db", "tick_seconds": 0, "mllp_port": 0}
        settings = demo_settings(Settings(**scratch_db)) if demo else Settings()  # type: ignore[arg-type]
        from gateway.api.app import create_app

        application = create_app(settings, FixedClock(moment))
        state = application.state
        if demo:
            from gateway.pathways.demo import load_demo_waitlist

            load_demo_waitlist(state, moment)
            state.pathways.tick(moment)
        if service is not None and service not in state.pathway_rules.services:
            raise typer.BadParameter(f"unknown service; known: {sorted(state.pathway_rules.services)}")
        with state.sessions() as session:
            snapshot = waitlist_snapshot(session, state.pathway_rules, moment, service, *period)
        state.engine.dispose()
    if fmt == "json":
        sys.stdout.write(json.dumps(snapshot, indent=2) + "\n")
    elif fmt == "csv":
        sys.stdout.write(waitlist_csv(snapshot))
    else:
        sys.stdout.write(_waitlist_table(snapshot))
    if plot is not None:
        plot_waitlist(snapshot, plot)
        typer.echo(f"plot written to {plot}", err=True)


def _waitlist_table(snapshot: dict[str, Any]) -> str:
    summary = snapshot["summary"]
    lines = [f"Wait list at {snapshot['generated']}: {summary['waiting']} waiting"]
    for waiting_for in ("first-appointment", "second-appointment"):
        group, line = summary[waiting_for], snapshot["lines"].get(waiting_for, {})
        marks = ", ".join(f"{k.replace('_days', '')} {v}d" for k, v in line.items())
        lines.append(
            f"  {waiting_for:<19} {group['waiting']:>4} waiting  {group['over_target']:>4} over target  "
            f"{group['over_outer_line']:>4} over outer line  longest {group['longest_days']}d  ({marks})"
        )
    for key in ("by_locality", "by_step", "by_intervention", "by_therapist"):
        lines.append(f"  {key.removeprefix('by_')}: " + ", ".join(f"{k} {v}" for k, v in summary[key].items()))
    lines.append(f"  overdue clocks: {len(snapshot['breaches'])}")
    for service in snapshot["treatment_targets"]:
        figures = "; ".join(
            f"within {t['within_days']}d {_share(t['share'])} (target {_share(t['target_share'])}: "
            f"{'met' if t['met'] else 'not met' if t['met'] is False else 'nobody to count'})"
            for t in service["targets"]
        )
        median = f", median {service['median_days']}d" if service["median_days"] is not None else ""
        lines.append(f"  {service['rule']} {service['service']}: {service['entered_treatment']} entered treatment{median}; {figures}")
    return "\n".join(lines) + "\n"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"
