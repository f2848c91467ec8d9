"""Operations: liveness (/healthz), readiness (/readyz), Prometheus metrics (/metrics)."""

from __future__ import annotations

from typing import Any

from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from fastapi import APIRouter, Request
from sqlalchemy import Engine, text
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response

from adapters.problems import Kind, Problem
from gateway.api.responses import unavailable
from gateway.platform.metrics import CONTENT_TYPE
from gateway.platform.store.db import alembic_config

__all__ = ["router", "migration_heads", "readiness_problems"]

router = APIRouter()


def migration_heads() -> frozenset[str]:
    """The Alembic revisions this code expects the database to be at."""
    return frozenset(ScriptDirectory.from_config(alembic_config()).get_heads())


def readiness_problems(engine: Engine, expected_heads: frozenset[str], *registries: Any) -> list[Problem]:
    """What stops this instance taking traffic: the database unreachable, its schema not at head, no rule files."""
    problems = []
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            current = frozenset(MigrationContext.configure(conn).get_current_heads())
        if current != expected_heads:
            problems.append(
                Problem(
                    Kind.UNAVAILABLE,
                    "database.schema",
                    f"database schema is at {sorted(current) or 'nothing'}, this gateway needs {sorted(expected_heads)}: "
                    "run `iap-gateway migrate`",
                )
            )
    except Exception as error:  # noqa: BLE001 - any failure to reach the database means not ready
        problems.append(Problem(Kind.UNAVAILABLE, "database", f"database not reachable ({type(error).__name__})"))
    for registry in registries:
        if not getattr(registry, "services", None):
            problems.append(Problem(Kind.UNAVAILABLE, "rules", f"no {type(registry).__name__} rule files are loaded"))
    return problems


@router.get("/healthz", summary="Liveness: the process answers (no dependencies checked)", tags=["operations"])
async def healthz() -> Response:  # on the event loop: liveness needs no worker thread (they may all be busy)
    return JSONResponse({"status": "ok"})


@router.get(
    "/readyz",
    summary="Readiness: database reachable, migrations at head, CAS and pathway rule files loaded; 503 OperationOutcome otherwise",
    tags=["operations"],
)
async def readyz(request: Request) -> Response:
    state = request.app.state
    problems = await run_in_threadpool(readiness_problems, state.engine, state.migration_heads, state.registry, state.pathway_rules)
    if problems:
        return unavailable(problems)
    rule_sets = [r.label for r in (*state.registry.services.values(), *state.pathway_rules.services.values())]
    return JSONResponse({"status": "ready", "rule_sets": sorted(rule_sets)})


@router.get("/metrics", summary="Prometheus metrics (text exposition format); scope metrics:read", tags=["operations"])
async def metrics(request: Request) -> Response:
    body = await run_in_threadpool(request.app.state.metrics.render)
    return Response(body, media_type=CONTENT_TYPE)
