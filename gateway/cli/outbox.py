"""`iap-gateway outbox ...`: the letter outbox."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from gateway.cli.common import worker_context

app = typer.Typer(no_args_is_help=True, help="The letter outbox: list, show, replay, purge.")


@app.command("list")
def outbox_list(
    status: Annotated[str | None, typer.Option(help="Comma-separated statuses, e.g. dead,failed.")] = None,
) -> None:
    """Deliveries (newest first) as JSON lines."""
    from gateway.letters.outbox import store

    engine, deliverer = worker_context()
    try:
        with deliverer.sessions() as session:
            rows, _ = store.list_rows(session, status.split(",") if status else None, None, 200, 0)
            for row in rows:
                typer.echo(json.dumps(store.row_json(row)))
    finally:
        deliverer.close()
        engine.dispose()


@app.command("show")
def outbox_show(delivery_id: Annotated[str, typer.Argument(help="The delivery id (GET /outbox).")]) -> None:
    """One delivery with every attempt, acknowledgement and decision."""
    from gateway.letters.outbox import store
    from gateway.platform.store.models import OutboxRow

    engine, deliverer = worker_context()
    try:
        with deliverer.sessions() as session:
            row = session.get(OutboxRow, delivery_id)
            if row is None:
                raise typer.BadParameter(f"no delivery {delivery_id}")
            typer.echo(json.dumps(store.row_json(row) | {"events": store.events_json(session, row.id)}, indent=2))
    finally:
        deliverer.close()
        engine.dispose()


@app.command("replay")
def outbox_replay(
    delivery_id: Annotated[str, typer.Argument(help="The delivery id (GET /outbox?status=dead).")],
    who: Annotated[str, typer.Option(help="Who asked for the replay (recorded).")] = "iap-gateway outbox replay",
) -> None:
    """Re-send a delivery from the stored letter now (dead, failed, withheld or sent); prints its new status."""
    from gateway.letters.outbox import store

    engine, deliverer = worker_context()
    try:
        with deliverer.sessions.begin() as session:
            try:
                row = store.replay(session, delivery_id, who, deliverer.clock.now())
            except ValueError as exc:
                raise typer.BadParameter(str(exc)) from None
            if row is None:
                raise typer.BadParameter(f"no delivery {delivery_id}")
        outcomes = deliverer.deliver_once(only=delivery_id)
    finally:
        deliverer.close()
        engine.dispose()
    status = outcomes[0][1] if outcomes else "pending"
    typer.echo(f"replay: {delivery_id} {status}", err=True)
    if status in ("dead", "failed"):
        raise typer.Exit(code=1)


@app.command("purge")
def outbox_purge(
    now: Annotated[str | None, typer.Option(help="The time to purge at (ISO 8601 with offset); default now.")] = None,
) -> None:
    """Retention: delete delivered deliveries older than IAP_OUTBOX_RETENTION_DAYS (never failed, dead or withheld ones)."""
    from gateway.letters.outbox import store

    engine, deliverer = worker_context(now)
    try:
        with deliverer.sessions.begin() as session:
            purged = store.purge(session, deliverer.clock.now() - deliverer.retention)
    finally:
        deliverer.close()
        engine.dispose()
    typer.echo(f"purge: {purged} delivered row(s) deleted", err=True)
