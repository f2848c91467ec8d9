"""Typed dependency aliases, so routes stay short (full-stack-fastapi-template style).

The ones that only read `app.state` are `async def`: FastAPI runs a plain `def` dependency in its
thread pool, a thread hop per dependency per request for an attribute read (bench/README.md)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from gateway.cas.intake import Intake
from gateway.cas.rules.schema import RuleRegistry
from gateway.platform.clock import Clock
from gateway.platform.security.principal import current_principal
from gateway.platform.settings import Settings
from gateway.platform.store.visibility import bind_reads

__all__ = ["SessionDep", "IntakeDep", "ClockDep", "RegistryDep", "SettingsDep"]


def _session(request: Request) -> Iterator[Session]:
    """The request's read session, bound to the acting client's service if it has one (gateway.platform.store.visibility)."""
    principal = current_principal()
    with request.app.state.sessions() as session:
        bind_reads(session, principal.service_id if principal else None)
        yield session


async def _fresh_rules(request: Request) -> None:
    """A CAS rule file version activated since the last look becomes this gateway's live one (issue 37): looked for at
    most every IAP_RULES_RELOAD_SECONDS, in the thread pool (a read of the history table); otherwise a time comparison."""
    versions = request.app.state.registry.history
    if versions is not None:
        now = request.app.state.clock.now()
        if versions.due(now):
            await run_in_threadpool(versions.refresh, now)


async def _intake(request: Request) -> Intake:
    await _fresh_rules(request)
    return request.app.state.intake  # type: ignore[no-any-return]


async def _clock(request: Request) -> Clock:
    return request.app.state.clock  # type: ignore[no-any-return]


async def _registry(request: Request) -> RuleRegistry:
    await _fresh_rules(request)
    return request.app.state.registry  # type: ignore[no-any-return]


async def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


SessionDep = Annotated[Session, Depends(_session)]
IntakeDep = Annotated[Intake, Depends(_intake)]
ClockDep = Annotated[Clock, Depends(_clock)]
RegistryDep = Annotated[RuleRegistry, Depends(_registry)]
SettingsDep = Annotated[Settings, Depends(_settings)]
