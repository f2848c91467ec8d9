"""Prometheus metrics: inbound messages by source and outcome, mapping latency, outbox depth and age, deliveries.

Counters live in the process's default registry (or, with PROMETHEUS_MULTIPROC_DIR set for
`serve --workers N`, in prometheus_client's multiprocess files). Outbox depth and age are read from
the store at scrape time, so every instance reports the shared outbox the same way.

For the delivery worker: call `gateway.audit.record_delivery(...)` inside the delivery's transaction;
it writes the AuditEvent and counts `iap_deliveries_total` once the transaction commits. A worker
that only needs the count calls `count_delivery(channel, outcome)`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import column, func, inspect, select, table
from sqlalchemy.orm import Session, sessionmaker

from gateway.clock import Clock

__all__ = [
    "MESSAGES",
    "MAPPING_SECONDS",
    "DELIVERIES",
    "HTTP_REQUESTS",
    "AUTH_REFUSALS",
    "DELIVERY_OUTCOMES",
    "count_delivery",
    "OutboxStats",
    "OutboxProbe",
    "outbox_table_probe",
    "Metrics",
    "CONTENT_TYPE",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
disable_created_metrics()  # no `*_created` series: counters and histograms only

MESSAGES = Counter(
    "iap_messages", "Inbound messages by source and outcome (accepted, duplicate, refused, unauthorised, error)", ["source", "outcome"]
)
MAPPING_SECONDS = Histogram(
    "iap_mapping_duration_seconds",
    "Time to take one inbound message from request to reply ready: parse, rules, FHIR mapping, store, commit",
    ["source"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
DELIVERIES = Counter("iap_deliveries", "Outbound deliveries by channel and outcome", ["channel", "outcome"])
HTTP_REQUESTS = Counter(
    "iap_http_requests", "HTTP requests by route (its scope-table pattern), method and status", ["route", "method", "status"]
)
AUTH_REFUSALS = Counter("iap_auth_refusals", "Requests refused before reaching a route: unauthenticated, forbidden, mllp-peer", ["reason"])

DELIVERY_OUTCOMES = ("delivered", "retry", "failed")


def count_delivery(channel: str, outcome: str) -> None:
    """One delivery attempt's outcome: `delivered`, `retry` (will be tried again) or `failed` (given up)."""
    if outcome not in DELIVERY_OUTCOMES:
        raise ValueError(f"delivery outcome must be one of {DELIVERY_OUTCOMES}")
    DELIVERIES.labels(channel=channel, outcome=outcome).inc()


@dataclass(frozen=True)
class OutboxStats:
    depth: int  # messages waiting to be delivered
    oldest_age_seconds: float  # how long the oldest of them has waited (0 when none)
    present: bool  # whether the store has an outbox at all


OutboxProbe = Callable[[Session, datetime], OutboxStats]


def outbox_table_probe(session: Session, now: datetime) -> OutboxStats:
    """Read the `outbox` table when the store has one: rows not yet delivered, and the oldest's `created_at`.

    Until the outbox exists (its migration) this reports 0 and `iap_outbox_present 0`. The delivery
    code can register a more exact probe with `Metrics.outbox_probe = ...` (its own notion of pending).
    """
    inspector = inspect(session.get_bind())
    if not inspector.has_table("outbox"):
        return OutboxStats(0, 0.0, False)
    names = {c["name"] for c in inspector.get_columns("outbox")}
    outbox = table("outbox", *[column(n) for n in names])
    query = select(func.count(), func.min(outbox.c.created_at) if "created_at" in names else func.count())
    if "delivered_at" in names:
        query = query.where(outbox.c.delivered_at.is_(None))
    elif "status" in names:
        query = query.where(outbox.c.status.not_in(("delivered", "failed", "dead")))
    depth, oldest = session.execute(query).one()
    if isinstance(oldest, str):  # SQLite hands back the stored text
        oldest = datetime.fromisoformat(oldest)
    age = 0.0
    if depth and isinstance(oldest, datetime):
        oldest = oldest if oldest.tzinfo else oldest.replace(tzinfo=UTC)  # the store keeps UTC
        age = max(0.0, (now - oldest).total_seconds())
    return OutboxStats(int(depth), age, True)


class _OutboxCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        with self.metrics.sessions() as session:
            stats = self.metrics.outbox_probe(session, self.metrics.clock.now())
        yield GaugeMetricFamily("iap_outbox_present", "1 when the store has a delivery outbox", value=int(stats.present))
        yield GaugeMetricFamily("iap_outbox_depth", "Messages waiting in the outbox for delivery", value=stats.depth)
        yield GaugeMetricFamily(
            "iap_outbox_oldest_age_seconds", "Age of the oldest message waiting in the outbox", value=stats.oldest_age_seconds
        )


class Metrics:
    """One app's /metrics: the process counters plus gauges read from its store."""

    def __init__(self, sessions: sessionmaker[Session], clock: Clock) -> None:
        self.sessions = sessions
        self.clock = clock
        self.outbox_probe: OutboxProbe = outbox_table_probe
        self.store_registry = CollectorRegistry(auto_describe=False)
        self.store_registry.register(_OutboxCollector(self))

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            process: CollectorRegistry = CollectorRegistry()
            MultiProcessCollector(process)
        else:
            process = REGISTRY
        return generate_latest(process) + generate_latest(self.store_registry)
