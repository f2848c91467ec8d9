"""The FastAPI application factory: settings, store (migrated), rule files (validated), clock, routes."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from functools import partial
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.types import Message, Receive, Scope, Send

from common.datetimes import is_england_bank_holiday
from fhir_mapping.measures import load_measures
from gateway.api import (
    audit,
    capability,
    cases,
    fhir_read,
    fhir_search,
    history,
    ingest,
    measures,
    message_log,
    ops,
    outbox,
    pathways,
    queue,
    reports,
    security,
)
from gateway.api.asgi import HttpMiddleware
from gateway.api.docs_pages import add_docs_pages
from gateway.api.fhir_http import FhirHttpConventions
from gateway.api.receipts import KeepReceipts
from gateway.api.responses import AnswerStoreOutages, install_error_handlers
from gateway.cas.cases import CaseOperations
from gateway.cas.cleo import CleoLink
from gateway.cas.intake import Intake
from gateway.cas.rules.schema import load_rules
from gateway.cas.safety_calls import run_ticker
from gateway.cas.safety_calls import tick as tick_safety_calls
from gateway.console import install_console
from gateway.epr.contact_batches import pcmis_batches, systmone_batches
from gateway.epr.hl7_intake import Hl7Intake
from gateway.epr.mllp import shared_by_workers, start_mllp_server
from gateway.epr.rules.sender_schema import load_senders
from gateway.letters.outbox.letters import use_services
from gateway.letters.outbox.worker import deliverer_from_settings, run_deliverer
from gateway.measures.responses import ResponseIntake
from gateway.pathways.rules.schema import load_pathways
from gateway.pathways.service import Pathways
from gateway.platform.clock import Clock, SystemClock
from gateway.platform.logging import configure_logging
from gateway.platform.metrics import Metrics
from gateway.platform.quarantine import purge as purge_quarantine
from gateway.platform.security.clients import Authenticator
from gateway.platform.security.guessing import FailedChecks
from gateway.platform.settings import Settings
from gateway.platform.store.db import make_engine, make_sessionmaker, migrate
from gateway.rules.versions import attach as attach_rule_history

__all__ = ["create_app", "served_app", "settle_heap"]

_ECHO_HEADERS = (b"x-request-id", b"x-correlation-id")


class EchoTransactionHeaders(HttpMiddleware):
    """BaRS transaction integrity: X-Request-Id and X-Correlation-Id echoed in every reply."""

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        echo = [(k, v) for k, v in scope["headers"] if k in _ECHO_HEADERS and v and len(v) <= 128]
        if not echo:
            return await self.app(scope, receive, send)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k for k, _ in echo}
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message = {**message, "headers": kept + list(dict(echo).items())}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(settings: Settings | None = None, clock: Clock | None = None) -> FastAPI:
    """Build the app. Fails fast on a bad rule file or an unreachable database (the prestart checks)."""
    settings = settings or Settings()
    configure_logging(settings.log_level, settings.log_json, settings.log_file)
    registry = load_rules(settings.rules_dir)
    pathway_rules = load_pathways(settings.pathways_dir)
    use_services(registry, pathway_rules)  # letters carry their service's contact details (issue 34)
    catalogue = load_measures()
    engine = make_engine(settings.database_url, settings.db_statement_timeout_ms)
    migrate(engine)
    sessions = make_sessionmaker(engine)
    clock = clock or SystemClock()
    deliverer = deliverer_from_settings(sessions, clock, settings)  # checks the routing file before anything listens

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        """Beside the API: the safety-call worker (CAS-09), the delivery worker (letters) and the MLLP listener (HL7 v2)."""
        worker = mllp = delivering = None
        if settings.mllp_port > 0:  # first: a port in use fails the start before anything else runs
            mllp = await start_mllp_server(
                app.state.hl7.receive,
                settings.mllp_host,
                settings.mllp_port,
                settings.mllp_max_buffer_bytes,
                allowed_peers=settings.mllp_peers,
                sessions=sessions,
                clock=clock,
                idle_timeout=settings.mllp_idle_timeout_seconds,
                max_connections=settings.mllp_max_connections,
                reuse_port=shared_by_workers(),
            )
        if settings.tick_seconds > 0:
            ticks = [partial(tick_safety_calls, sessions, registry), app.state.pathways.tick, app.state.purge_quarantine]
            worker = asyncio.create_task(run_ticker(ticks, clock, timedelta(seconds=settings.tick_seconds)))
        if settings.deliver_seconds > 0:
            delivering = asyncio.create_task(run_deliverer(deliverer, timedelta(seconds=settings.deliver_seconds)))
        yield
        if worker:
            worker.cancel()
        if delivering:
            delivering.cancel()
        deliverer.close()
        if mllp:
            mllp.close()
            await mllp.wait_closed()

    app = FastAPI(
        title="IAP gateway",
        version="0.1.0",
        description="FHIR R4 integration gateway for NHS mental health services",
        lifespan=lifespan,
        docs_url=None,  # served by add_docs_pages from the installed package, not a CDN
        redoc_url=None,
    )
    add_docs_pages(app)
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = sessions
    app.state.registry = registry
    attach_rule_history(sessions, registry, settings.rules_reload_seconds, clock.now())  # versions of open cases; activations
    app.state.clock = clock
    app.state.intake = Intake(sessions, registry, clock)
    app.state.measures = catalogue
    app.state.responses = ResponseIntake(sessions, catalogue, clock)
    app.state.cases = CaseOperations(sessions, registry, clock, load_senders(settings.senders_dir))  # notes back to EPRs: CAS-13
    app.state.hl7 = Hl7Intake(sessions, clock, load_senders(settings.senders_dir))  # how each sender is read (issue 32)
    app.state.cleo = CleoLink(sessions, app.state.cases, clock)
    app.state.pathway_rules = pathway_rules
    app.state.pathways = Pathways(sessions, pathway_rules, catalogue, clock)
    app.state.pcmis = pcmis_batches(sessions, catalogue, clock, link=app.state.pathways.link_pcmis_contact)  # TT episodes
    app.state.systmone = systmone_batches(sessions, catalogue, clock, link=app.state.pathways.link_systmone_contact)  # PC episodes
    app.state.deliverer = deliverer
    failures = FailedChecks(clock, settings.auth_failure_limit, settings.auth_failure_window_seconds)
    app.state.authenticator = Authenticator(sessions, clock, timedelta(seconds=settings.token_ttl_seconds), failures)
    app.state.metrics = Metrics(sessions, clock)
    # refused messages and re-send records older than IAP_QUARANTINE_RETENTION_DAYS go, on the ticker (docs/quarantine.md)
    app.state.purge_quarantine = partial(purge_quarantine, sessions, timedelta(days=settings.quarantine_retention_days))
    app.state.migration_heads = ops.migration_heads()
    install_error_handlers(app)
    app.add_middleware(KeepReceipts)  # inside the security gate (the sender is known): refusals kept, re-sends counted
    app.add_middleware(security.SecurityMiddleware)  # inside the header echo, so refusals carry X-Request-Id too
    app.add_middleware(FhirHttpConventions)  # outside the security gate: a POST _search is scoped and audited as its GET
    app.add_middleware(AnswerStoreOutages)  # outside the security gate: a credential check the store cannot answer too

    app.add_middleware(EchoTransactionHeaders)

    app.include_router(ops.router)
    app.include_router(security.router)
    app.include_router(ingest.router)
    app.include_router(queue.router)
    app.include_router(measures.router)
    app.include_router(cases.router)
    app.include_router(pathways.router)
    app.include_router(reports.router)
    app.include_router(outbox.router)
    app.include_router(message_log.router)  # /ops/...: the console's data for ops tools (docs/quarantine.md)
    app.include_router(audit.router)  # before fhir_read's generic /fhir/{type}/{id}
    app.include_router(capability.router)  # /fhir/OperationDefinition/{id}, likewise
    app.include_router(fhir_read.router)
    app.include_router(fhir_search.router)  # the generic /fhir/{type} search, after every type's own
    app.include_router(history.router)
    install_console(app)  # the operator console's pages, under /console/ (gateway/console)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def served_app() -> FastAPI:
    """The app as `iap-gateway serve` runs it (each worker process builds its own): `create_app()`, its heap settled."""
    app = create_app()
    settle_heap(app.state.clock)
    return app


def settle_heap(clock: Clock) -> None:
    """Take what lives as long as the server out of the cyclic garbage collector's scans; call once it is built.

    The collector's oldest generation is scanned whole every so often under load. With start-up's ~240,000
    objects in it (the FHIR models, rule files, routes), each scan held a worker, and every request in it,
    for 15-150 ms, and set the ingest p99 (bench/README.md, ninth round). So: the England bank-holiday calendar
    for this year is built now rather than on a first request, start-up's garbage is collected, and what is
    left is frozen (`gc.freeze`): kept, and skipped by every later scan. A server's objects made after this
    are collected as before.
    """
    is_england_bank_holiday(clock.now().date())
    gc.collect()
    gc.freeze()


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI description, saying how to authenticate (bearer API key or access token) on every operation."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key (iapk_...) from `iap-gateway clients add`, "
                "or an access token (iapt_...) from POST /oauth2/token",
            }
        }
        schema["security"] = [{"bearer": []}]
        app.openapi_schema = schema
    return app.openapi_schema
