"""`iap-gateway practices ...`: the GP practice directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gateway.cli.common import store_sessions

app = typer.Typer(no_args_is_help=True, help="The GP practice directory (NHS England ODS epraccur.csv).")


@app.command("load")
def practices_load(path: Annotated[Path, typer.Argument(help="An epraccur.csv (ODS GP practices); run again to refresh.")]) -> None:
    """Load or refresh the GP practice directory that letters to a practice are addressed from (issue 34)."""
    from adapters.epraccur import read_epraccur
    from gateway.letters.outbox.practices import load_practices
    from gateway.platform.clock import SystemClock

    practices, problems = read_epraccur(path.read_bytes())
    for problem in problems[:20]:
        typer.echo(f"skipped: {problem}", err=True)
    with store_sessions() as sessions, sessions.begin() as session:
        added, updated = load_practices(session, practices, SystemClock().now())
    typer.echo(f"{len(practices)} practices read: {added} added, {updated} updated, {len(problems)} skipped")
