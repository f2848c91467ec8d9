"""Service binding of reads, in one place: what a client bound to a service may see of the store.

Every read a route makes goes through a read session (`gateway.api.deps.SessionDep`). When the acting
client is bound to a service, `bind_reads` marks that session, and from then on every ORM statement run
on it (a search, `session.get`, a count, a subquery) carries the criteria below, added by one
`do_orm_execute` hook; `gateway.platform.store.repo.get_resource`, the one plain-statement read, asks
`resource_visible` itself. A route added later gets the same binding without doing anything, and
tests/test_service_binding.py walks every GET route and operation to show it.

What belongs to a service (issue 31, item 1):
- a resource row written with the service (a CAS Task and what its referral wrote, a case operation's
  records, an EpisodeOfCare and what hangs off it, a letter sent by a bound client);
- a Patient, to every service that holds a resource about them (a case, an episode, a note);
- a resource written with no service (e.g. a measure sent by an unbound client, about no episode), to
  every service that holds its patient;
- an AuditEvent, to the service of the client that acted;
- a letter's deliveries (outbox rows), to the service that owns the letter's DocumentReference;
- an inbound message (stored, quarantined or re-sent), to the service it went to or whose client sent it.

Anything else (a row with neither a service nor a patient) is seen by unbound clients only. A bound
client asking for another service's resource by id gets 404, as for an id never stored, and searches
leave such rows out without saying so. Write paths (intake, operations) use their own sessions and see
the whole store: matching a patient or a re-sent message must not depend on who sends it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Table, and_, event, false, or_, select
from sqlalchemy.orm import ORMExecuteState, Session, with_loader_criteria

from gateway.platform.store.models import (
    ApiClient,
    AuditEventRow,
    InboundMessage,
    OutboxRow,
    QuarantinedMessage,
    ResentMessage,
    ResourceRow,
)

__all__ = ["bind_reads", "bound_service", "resource_visible"]

_BOUND = "iap_bound_service"  # session.info: the one service this read session may see (absent: everything)
_RESOURCES: Table = ResourceRow.__table__  # type: ignore[assignment]
_CLIENTS: Table = ApiClient.__table__  # type: ignore[assignment]


def bind_reads(session: Session, service_id: str | None) -> None:
    """From now on `session` reads only what `service_id` may see (None: no binding, everything)."""
    if service_id is None:
        session.info.pop(_BOUND, None)
    else:
        session.info[_BOUND] = service_id


def bound_service(session: Session) -> str | None:
    """The service this session's reads are bound to, or None."""
    return session.info.get(_BOUND)


def _held(service_id: str) -> Any:
    """The ids of the patients `service_id` holds a resource about (plain table: no criteria applied to itself)."""
    held = _RESOURCES.alias("held")
    return select(held.c.subject_id).where(held.c.service_id == service_id, held.c.subject_id.is_not(None))


def resource_visible(service_id: str, table: Any = _RESOURCES) -> ColumnElement[bool]:
    """The rows of `table` (the resources table, the ORM entity or an alias of either) that `service_id` may see."""
    held = _held(service_id)
    return or_(
        table.c.service_id == service_id if hasattr(table, "c") else table.service_id == service_id,
        and_(_col(table, "resource_type") == "Patient", _col(table, "id").in_(held)),
        and_(_col(table, "service_id").is_(None), _col(table, "subject_id").in_(held)),
    )


def _col(table: Any, name: str) -> Any:
    return table.c[name] if hasattr(table, "c") else getattr(table, name)


def _criteria(service_id: str) -> list[Any]:
    clients = select(_CLIENTS.c.id).where(_CLIENTS.c.service_id == service_id)
    letters = _RESOURCES.alias("letters")
    own_letters = select(letters.c.id).where(letters.c.resource_type == "DocumentReference", resource_visible(service_id, letters))
    return [
        with_loader_criteria(ResourceRow, resource_visible(service_id, ResourceRow), include_aliases=True),
        with_loader_criteria(AuditEventRow, AuditEventRow.client_id.in_(clients), include_aliases=True),
        with_loader_criteria(OutboxRow, OutboxRow.letter_id.in_(own_letters), include_aliases=True),
        # inbound messages, refused ones and re-sends: those sent by the service's clients or that went to the service
        # (the service their resources were written with; docs/quarantine.md)
        with_loader_criteria(InboundMessage, InboundMessage.service_id == service_id, include_aliases=True),
        with_loader_criteria(QuarantinedMessage, QuarantinedMessage.service_id == service_id, include_aliases=True),
        with_loader_criteria(ResentMessage, ResentMessage.service_id == service_id, include_aliases=True),
        # api clients and tokens are the security gate's, read on sessions of their own: a bound read session sees none
        with_loader_criteria(ApiClient, false(), include_aliases=True),
    ]


@event.listens_for(Session, "do_orm_execute")
def _bind(state: ORMExecuteState) -> None:
    """Every ORM read on a bound session carries the binding's criteria (searches, counts, `session.get`)."""
    service_id = state.session.info.get(_BOUND)
    if service_id is not None and state.is_select:
        state.statement = state.statement.options(*_criteria(service_id))
