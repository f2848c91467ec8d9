"""One Settings object (pydantic-settings): environment variables, safe defaults for local use only."""

from __future__ import annotations

import ipaddress
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.cas.rules.schema import DEFAULT_RULES_DIR
from gateway.epr.rules.sender_schema import DEFAULT_SENDERS_DIR
from gateway.pathways.rules.schema import DEFAULT_PATHWAYS_DIR

DEFAULT_ROUTING_FILE = Path(__file__).parents[1] / "letters" / "routing.yaml"

__all__ = ["Settings", "DEFAULT_ROUTING_FILE"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IAP_", extra="ignore")

    environment: Literal["local", "test", "production"] = "local"
    # DATABASE_URL (no prefix, the usual name): SQLite file by default; postgresql://... for several instances
    database_url: str = Field(default="sqlite:///./iap-gateway.db", validation_alias="DATABASE_URL")
    rules_dir: Path = DEFAULT_RULES_DIR
    # a running gateway looks for newly activated CAS rule file versions this often (issue 37); 0 = only at start
    rules_reload_seconds: int = Field(default=30, ge=0)
    pathways_dir: Path = DEFAULT_PATHWAYS_DIR  # PC and TT pathway rule files (schema pathway/1)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    # messages one worker process works on at once; the rest wait their turn (more threads only contend for the GIL:
    # at 200 req/s on 2 cores, 40 threads fell behind where 4 kept up, and 2 took more than 4 on both stores,
    # bench/README.md). Local decision, tune per host.
    ingest_concurrency: int = Field(default=2, ge=1, le=64)
    # a message that has waited this long for its turn is answered 503 "busy" with Retry-After (the sender sends it again
    # later) rather than held for ever while the backlog grows; 0 = no limit
    ingest_queue_seconds: float = Field(default=10, ge=0)
    tick_seconds: int = Field(default=60, ge=0)  # safety-call worker interval; 0 = off (run `iap-gateway tick` instead)
    mllp_host: str = "127.0.0.1"
    mllp_port: int = Field(default=2575, ge=0, le=65535)  # HL7 v2 over MLLP (RiO); 0 = off
    senders_dir: Path = DEFAULT_SENDERS_DIR  # HL7 v2 sender profiles; a profile's `destination` gets CAS notes (CAS-13)
    # letters and delivery (docs/letters.md)
    deliver_seconds: int = Field(default=30, ge=0)  # outbox worker interval in `serve`; 0 = off (run `iap-gateway deliver`)
    routing_file: Path = DEFAULT_ROUTING_FILE  # ODS code -> MESH mailbox / FHIR endpoint; GPPROVIDER routing; sender
    outbox_max_attempts: int = Field(default=8, ge=1, le=100)
    outbox_backoff_seconds: float = Field(default=30.0, gt=0)  # first retry after about this long, doubling, with jitter
    outbox_backoff_max_seconds: float = Field(default=3600.0, gt=0)
    outbox_lease_seconds: int = Field(default=300, ge=5)  # a claimed delivery whose worker vanished is retried after this
    outbox_retention_days: int = Field(default=90, ge=1)  # delivered rows are deleted after this; failed/dead never
    # GPCM-SD-095: a letter sent by MESH with no acknowledgement after this long is raised for a person (local decision: 48 h)
    outbox_ack_due_hours: float = Field(default=48.0, gt=0)
    mesh_url: str | None = None  # e.g. https://msg.intspineservices.nhs.uk; unset = no MESH transport
    mesh_mailbox: str | None = None
    mesh_password: str | None = None
    mesh_shared_key: str | None = None
    mesh_cert: Path | None = None  # client certificate (mutual TLS), with mesh_key
    mesh_key: Path | None = None
    mesh_ca: Path | None = None  # CA bundle to verify the MESH server
    mesh_timeout_seconds: float = Field(default=60.0, gt=0)
    fhir_push_timeout_seconds: float = Field(default=30.0, gt=0)
    print_dir: Path | None = None  # copies for clients: PDFs dropped here for the print-and-post service
    # email for clients who agreed to it (TT-15; docs/letters.md): no host = no email at all, the letter goes by post
    smtp_host: str | None = None
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_security: Literal["starttls", "tls", "none"] = "starttls"  # `none` only for a relay on this host
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_from: str | None = None  # required with IAP_SMTP_HOST
    smtp_ca: Path | None = None  # CA bundle to verify the SMTP server (default: the system's)
    smtp_timeout_seconds: float = Field(default=30.0, gt=0)
    # MLLP peers allowed to connect: addresses or networks, comma-separated (e.g. "10.20.0.5,10.21.0.0/24")
    mllp_allowed_peers: str = "127.0.0.1,::1"
    mllp_idle_timeout_seconds: float = Field(default=300, gt=0)  # an MLLP connection silent this long is closed
    mllp_max_connections: int = Field(default=16, ge=1, le=4096)  # MLLP sessions at once; one more is closed unread
    mllp_max_buffer_bytes: int = Field(default=1_048_576, ge=1024)  # an MLLP block longer is answered AR, connection closed
    quarantine_retention_days: int = Field(default=14, ge=1)  # refused messages are kept this long (docs/quarantine.md)
    batch_max_rows: int = Field(default=1000, ge=1, le=100_000)  # rows in one PCMIS / SystmOne batch; more: the file is refused
    # failed credential checks: after this many in the window from one address, or for one API key id, 429 with Retry-After
    auth_failure_limit: int = Field(default=10, ge=1)
    auth_failure_window_seconds: float = Field(default=60, gt=0)
    body_timeout_seconds: float = Field(default=30, gt=0)  # a request body must arrive within this (else 408)
    # PostgreSQL: statement_timeout; SQLite: how long a write waits for the writer lock, then for another process's lock; 0 = none
    db_statement_timeout_ms: int = Field(default=30_000, ge=0)
    token_ttl_seconds: int = Field(default=600, ge=60, le=3600)  # access tokens from /oauth2/token
    # the token endpoint's public URL, which client assertions must name in `aud` (default: as this request reached us)
    token_audience: str | None = None
    console_idle_minutes: int = Field(default=15, ge=1, le=720)  # an operator console session unused this long is signed out
    log_json: bool = True
    log_level: str = "INFO"
    log_file: Path | None = None  # also append the JSON log lines to this file

    @field_validator("log_file", "token_audience", "smtp_host", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @cached_property
    def mllp_peers(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(p.strip(), strict=False) for p in self.mllp_allowed_peers.split(",") if p.strip())

    @model_validator(mode="after")
    def _no_unsafe_defaults(self) -> Settings:
        if (
            self.environment == "production"
            and "DATABASE_URL" not in self.model_fields_set
            and self.database_url.startswith("sqlite:///./")
        ):
            raise ValueError("IAP_ENVIRONMENT=production needs an explicit DATABASE_URL (refusing the local SQLite default)")
        try:
            self.mllp_peers  # noqa: B018 - parsed now, so a bad value stops the start, naming the setting
        except ValueError as error:
            raise ValueError(f"IAP_MLLP_ALLOWED_PEERS: {error}") from None
        return self
