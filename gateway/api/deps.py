"""Typed dependency aliases, so routes stay short (full-stack-fastapi-template style).

The ones that only read `app.state` are `async def`: FastAPI runs a plain `def` dependency in its
thread pool, a thread hop per dependency per request for an attribute read (bench/README.md)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from gateway.clock import Clock
from gateway.intake import Intake
from gateway.rules.schema import RuleRegistry
from gateway.security.principal import current_principal
from gateway.settings import Settings
from gateway.store.visibility import bind_reads

__all__ = ["SessionDep", "IntakeDep", "ClockDep", "RegistryDep", "SettingsDep"]


def _session(request: Request) -> Iterator[Session]:
    """The request's read session, bound to the acting client's service if it has one (gateway.store.visibility)."""
    principal = current_principal()
    with request.app.state.sessions() as session:
        bind_reads(session, principal.service_id if principal else None)
        yield session


async def _intake(request: Request) -> Intake:
    return request.app.state.intake  # type: ignore[no-any-return]


async def _clock(request: Request) -> Clock:
    return request.app.state.clock  # type: ignore[no-any-return]


async def _registry(request: Request) -> RuleRegistry:
    return request.app.state.registry  # type: ignore[no-any-return]


async def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


SessionDep = Annotated[Session, Depends(_session)]
IntakeDep = Annotated[Intake, Depends(_intake)]
ClockDep = Annotated[Clock, Depends(_clock)]
RegistryDep = Annotated[RuleRegistry, Depends(_registry)]
SettingsDep = Annotated[Settings, Depends(_settings)]
