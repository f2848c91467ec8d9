"""Prometheus metrics: inbound messages by source and outcome, mapping latency, outbox depth and age, deliveries.

Counters live in the process's default registry (or, with PROMETHEUS_MULTIPROC_DIR set for
`serve --workers N`, in prometheus_client's multiprocess files). Outbox depth and age are read from
the store at scrape time, so every instance reports the shared outbox the same way.

The delivery worker calls `gateway.platform.audit.record_delivery(...)` inside each delivery event's transaction;
it writes the AuditEvent and counts `iap_deliveries_total` once the transaction commits.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from gateway.letters.outbox import store as outbox_store
from gateway.platform.clock import Clock

__all__ = [
    "MESSAGES",
    "MESSAGE_ID_REUSES",
    "MAPPING_SECONDS",
    "INGEST_WAIT_SECONDS",
    "STORE_COMMIT_MESSAGES",
    "DELIVERIES",
    "HTTP_REQUESTS",
    "AUTH_REFUSALS",
    "MLLP_REFUSED_CONNECTIONS",
    "QUARANTINE_FAILURES",
    "CREDENTIAL_FAILURES",
    "DELIVERY_OUTCOMES",
    "count_delivery",
    "Metrics",
    "CONTENT_TYPE",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
disable_created_metrics()  # no `*_created` series: counters and histograms only

MESSAGES = Counter(
    "iap_messages",
    "Inbound messages by source and outcome (accepted, duplicate, refused, unauthorised, unavailable, error)",
    ["source", "outcome"],
)
MESSAGE_ID_REUSES = Counter(
    "iap_message_id_reuses",
    "Inbound messages refused for reusing a stored message's id with different content (not a re-send: the sender"
    " must give a new message a new id); also counted as refused in iap_messages_total",
    ["source"],
)
INGEST_WAIT_SECONDS = Histogram(
    "iap_ingest_wait_seconds",
    "Time an inbound HTTP message waited for its turn (IAP_INGEST_CONCURRENCY per process) before its work began;"
    " one that waits IAP_INGEST_QUEUE_SECONDS is answered 503",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
MAPPING_SECONDS = Histogram(
    "iap_mapping_duration_seconds",
    "Time to take one inbound message from request to reply ready: parse, rules, FHIR mapping, store, commit",
    ["source"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
STORE_COMMIT_MESSAGES = Histogram(
    "iap_store_commit_messages",
    "Messages per SQLite commit: those waiting for the file's one writer share a commit (group commit)",
    buckets=(1, 2, 3, 4, 6, 8, 16, 32),
)
DELIVERIES = Counter("iap_deliveries", "Outbound deliveries by channel and outcome", ["channel", "outcome"])
HTTP_REQUESTS = Counter(
    "iap_http_requests", "HTTP requests by route (its scope-table pattern), method and status", ["route", "method", "status"]
)
AUTH_REFUSALS = Counter("iap_auth_refusals", "Requests refused before reaching a route: unauthenticated, forbidden, mllp-peer", ["reason"])
CREDENTIAL_FAILURES = Counter(
    "iap_credential_failures",
    "Bearer credentials presented and not valid (not-valid), and requests answered 429 after too many failed checks from"
    " their address or for their API key id (rate-limited): a rise is someone guessing; alert on it",
    ["outcome"],
)
MLLP_REFUSED_CONNECTIONS = Counter(
    "iap_mllp_refused_connections", "MLLP connections closed unread: busy (IAP_MLLP_MAX_CONNECTIONS sessions open)", ["reason"]
)
QUARANTINE_FAILURES = Counter(
    "iap_quarantine_failures",
    "Refused or re-sent inbound messages that could not be kept in the quarantine log (the sender had its reply"
    " unchanged; docs/quarantine.md): a rise means the log is missing refusals",
    ["channel"],
)

# the outbox's words (docs/letters.md); `unacknowledged`: sent, no acknowledgement in time (GPCM-SD-095): alert on it
DELIVERY_OUTCOMES = ("sent", "delivered", "retry", "failed", "dead", "withheld", "unacknowledged")


def count_delivery(channel: str, outcome: str) -> None:
    """One delivery event's outcome: `sent` (handed over), `delivered` (acknowledged), `retry` (will be tried again),
    `failed` (the receiver refused it), `dead` (given up), `withheld` (consent: not sent), `unacknowledged` (no
    acknowledgement within IAP_OUTBOX_ACK_DUE_HOURS: a person is asked to follow it up, GPCM-SD-095)."""
    if outcome not in DELIVERY_OUTCOMES:
        raise ValueError(f"delivery outcome must be one of {DELIVERY_OUTCOMES}")
    DELIVERIES.labels(channel=channel, outcome=outcome).inc()


class _OutboxCollector(Collector):
    """Outbox gauges, read from the store at scrape time (every instance reports the shared outbox alike)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        with self.metrics.sessions() as session:
            counts, oldest = outbox_store.summary(session)
        age = max(0.0, (self.metrics.clock.now() - oldest).total_seconds()) if oldest else 0.0
        depth = sum(counts.get(status, 0) for status in outbox_store.WAITING)
        yield GaugeMetricFamily("iap_outbox_depth", "Deliveries waiting in the outbox (pending or being sent)", value=depth)
        yield GaugeMetricFamily(
            "iap_outbox_oldest_age_seconds", "Age of the oldest delivery waiting in the outbox (0 when none)", value=age
        )
        rows = GaugeMetricFamily("iap_outbox_rows", "Outbox rows by status (dead and failed need a person)", labels=["status"])
        for status in outbox_store.STATUSES:
            rows.add_metric([status], counts.get(status, 0))
        yield rows


class Metrics:
    """One app's /metrics: the process counters plus gauges read from its store."""

    def __init__(self, sessions: sessionmaker[Session], clock: Clock) -> None:
        self.sessions = sessions
        self.clock = clock
        self.store_registry = CollectorRegistry(auto_describe=False)
        self.store_registry.register(_OutboxCollector(self))

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            process: CollectorRegistry = CollectorRegistry()
            MultiProcessCollector(process)
        else:
            process = REGISTRY
        return generate_latest(process) + generate_latest(self.store_registry)
