"""Helpers the command groups share: a migrated store, the delivery worker, printing offline results."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import typer

from adapters.problems import GatewayInputError
from common.datetimes import parse_source_datetime
from fhir_mapping.replies import operation_outcome


@contextmanager
def store_sessions() -> Iterator[Any]:
    """Sessions on DATABASE_URL, migrated first; the engine is closed afterwards."""
    from gateway.platform.settings import Settings
    from gateway.platform.store.db import make_engine, make_sessionmaker
    from gateway.platform.store.db import migrate as run_migrations

    settings = Settings()
    engine = make_engine(settings.database_url)
    try:
        run_migrations(engine)
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


def worker_context(now: str | None = None):  # type: ignore[no-untyped-def]
    """(engine, deliverer) on DATABASE_URL, migrated; the clock fixed at `now` when given."""
    from gateway.letters.outbox.worker import deliverer_from_settings
    from gateway.platform.clock import FixedClock, SystemClock
    from gateway.platform.settings import Settings
    from gateway.platform.store.db import make_engine, make_sessionmaker
    from gateway.platform.store.db import migrate as run_migrations

    settings = Settings()
    engine = make_engine(settings.database_url)
    run_migrations(engine)
    clock = FixedClock(parse_source_datetime(now)) if now else SystemClock()
    try:
        deliverer = deliverer_from_settings(make_sessionmaker(engine), clock, settings)
    except ValueError as exc:
        engine.dispose()
        raise typer.BadParameter(str(exc)) from None
    return engine, deliverer


def print_offline(produce: Callable[[datetime], dict[str, Any]], received_at: str | None) -> None:
    """Print what `produce` returns as JSON, or the OperationOutcome on stderr and exit 1."""
    from gateway.platform.clock import SystemClock

    moment = parse_source_datetime(received_at) if received_at else SystemClock().now()
    try:
        bundle = produce(moment)
    except GatewayInputError as exc:
        typer.echo(json.dumps(operation_outcome(exc.problems), indent=2), err=True)
        raise typer.Exit(code=1) from None
    sys.stdout.write(json.dumps(bundle, indent=2, ensure_ascii=False) + "\n")
