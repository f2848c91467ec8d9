"""`iap-gateway migrate`: the database schema."""

from __future__ import annotations

import typer

app = typer.Typer()


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema (Alembic) on DATABASE_URL."""
    from gateway.platform.settings import Settings
    from gateway.platform.store.db import make_engine
    from gateway.platform.store.db import migrate as run_migrations

    run_migrations(make_engine(Settings().database_url))
    typer.echo("database is at the newest schema", err=True)
