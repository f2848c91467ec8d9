"""`iap-gateway tick` and `deliver`: the scheduled work, once (cron, systemd timers, Kubernetes CronJobs)."""

from __future__ import annotations

from typing import Annotated

import typer

from common.datetimes import parse_source_datetime
from gateway.cli.common import worker_context

app = typer.Typer()


@app.command()
def tick(
    now: Annotated[str | None, typer.Option(help="The time to tick at (ISO 8601 with offset); default now.")] = None,
) -> None:
    """Create the Tasks due now, once: safety calls for amber and red CAS cases (CAS-09) and pathway clocks (PC/TT);
    purge the quarantine log past its retention; safe to run anywhere, any number of times."""
    from datetime import timedelta

    from gateway.cas.rules.schema import load_rules
    from gateway.cas.safety_calls import tick as run_tick
    from gateway.platform.clock import SystemClock
    from gateway.platform.quarantine import purge as purge_quarantine
    from gateway.platform.settings import Settings
    from gateway.platform.store.db import make_engine, make_sessionmaker
    from gateway.platform.store.db import migrate as run_migrations
    from gateway.rules.versions import attach

    settings = Settings()
    engine = make_engine(settings.database_url)
    run_migrations(engine)
    moment = parse_source_datetime(now) if now else SystemClock().now()
    from fhir_mapping.measures import load_measures
    from gateway.pathways.rules.schema import load_pathways
    from gateway.pathways.service import Pathways
    from gateway.platform.clock import FixedClock

    sessions = make_sessionmaker(engine)
    registry = load_rules(settings.rules_dir)
    attach(sessions, registry, 0, moment)  # each open case by the version that decided it (issue 37)
    created = run_tick(sessions, registry, moment)
    due = Pathways(sessions, load_pathways(settings.pathways_dir), load_measures(), FixedClock(moment)).tick(moment)
    purged = purge_quarantine(sessions, timedelta(days=settings.quarantine_retention_days), moment)  # docs/quarantine.md
    typer.echo(
        f"tick: {len(created)} safety call(s) created; {len(due)} pathway clock Task(s) created;"
        f" {purged} quarantine log row(s) past IAP_QUARANTINE_RETENTION_DAYS purged",
        err=True,
    )
    engine.dispose()


@app.command()
def deliver(
    now: Annotated[str | None, typer.Option(help="The time to deliver at (ISO 8601 with offset); default now.")] = None,
) -> None:
    """Send the letters that are due (MESH, FHIR push, print folder), poll acknowledgements, apply retention; once.

    Safe on several instances at once: each delivery is claimed by one worker.
    """
    engine, deliverer = worker_context(now)
    try:
        counts = deliverer.run_pass()
    finally:
        deliverer.close()
        engine.dispose()
    typer.echo("deliver: " + ", ".join(f"{k} {v}" for k, v in counts.items()), err=True)
