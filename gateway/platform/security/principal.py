"""Who is acting: an authenticated client, or the gateway itself; and the check that binds a client to its service."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from adapters.problems import GatewayInputError, Kind, Problem

__all__ = ["Principal", "SYSTEM", "current_principal", "acting", "allowed_service", "require_service"]


@dataclass(frozen=True)
class Principal:
    """An authenticated client (or the gateway): who it is, what it may do, the one service it is bound to (if any)."""

    client_id: str
    name: str
    scopes: frozenset[str]
    service_id: str | None = None


SYSTEM = Principal("iap-gateway", "iap-gateway", frozenset({"admin"}))

acting: ContextVar[Principal | None] = ContextVar("iap_principal", default=None)


def current_principal() -> Principal | None:
    """The client this request (or MLLP message) is for; None outside one (workers, CLI: the gateway itself)."""
    return acting.get()


def allowed_service(requested: str | None) -> str | None:
    """The service a view should show: a bound client's own (refused if it asks for another), else what was asked."""
    principal = acting.get()
    if principal is None or principal.service_id is None:
        return requested
    if requested is not None and requested != principal.service_id:
        raise _forbidden(requested, principal)
    return principal.service_id


def require_service(service_id: str | None) -> None:
    """Refuse (403) a client bound to one service acting on another service's case; unbound clients pass."""
    principal = acting.get()
    if principal is not None and principal.service_id is not None and service_id != principal.service_id:
        raise _forbidden(service_id, principal)


def _forbidden(service_id: str | None, principal: Principal) -> GatewayInputError:
    return GatewayInputError(
        Problem(
            Kind.FORBIDDEN,
            "service",
            f"client {principal.name!r} is bound to service {principal.service_id!r} and may not act for {str(service_id)[:32]!r}",
        ),
        stage="authorisation",
    )
