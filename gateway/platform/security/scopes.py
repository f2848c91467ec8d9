"""Scopes, and the one table that says which scope each route needs. Default-deny: a route not listed needs `admin`.

The table is data: one row per route family, read top to bottom, first match wins (so put specific
rows before general ones). A row gives the methods, a path pattern (`{name}` is one path segment,
a trailing `/**` is "this path and anything below it"), the scopes that allow it (any one is
enough; `admin` allows everything), the FHIR interaction it is audited as, and, for inbound
messages, the source its metrics are counted under. `PUBLIC` rows need no credential at all and
are kept to what an orchestrator or a client must reach before it has one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

__all__ = ["SCOPES", "ADMIN", "PUBLIC", "RouteRule", "ROUTES", "DEFAULT_RULE", "rule_for", "check_scopes"]

ADMIN = "admin"
PUBLIC = "public"

# every scope a client can be given, and what it allows (shown by `iap-gateway clients scopes`)
SCOPES: dict[str, str] = {
    "ingest:nhs111": "submit NHS 111 referrals: flat case JSON and BaRS $process-message (and get their replies)",
    "ingest:mhpl": "submit Mental Health Professional Line calls",
    "ingest:hl7v2": "send RiO HL7 v2 messages over HTTP (MLLP peers are allow-listed by address instead)",
    "ingest:cleo": "CLEO: send case updates and read the case export (bound to one service when the client has one)",
    "ingest:pcmis": "send PCMIS contact exports",
    "ingest:systmone": "send SystmOne template extracts",
    "ingest:referral": "route referrals to primary care and Talking Therapies pathways (ServiceRequest/$route)",
    "cas:operate": "work the CAS queue: queue views, case operations, risk level confirmation, $explain",
    "pathway:operate": "work pathway episodes of care: their operations and $explain",
    "fhir:read": "read and search FHIR resources (Task, Patient, Observation, ...), $outcome-summary",
    "measures:write": "submit completed outcome measures (QuestionnaireResponse)",
    "reports:read": "read reports (waiting lists and the like)",
    "outbox:read": "read the delivery outbox",
    "outbox:operate": "send a delivery again ($replay)",
    "letters:write": "request letters (POST /fhir/CommunicationRequest): stored with their document, PDF and deliveries",
    "audit:read": "search the audit trail (/fhir/AuditEvent)",
    "metrics:read": "scrape Prometheus metrics (/metrics)",
    "messages:read": "the operator console's message log, quarantine log and channel counts (no message bodies)",
    "messages:raw": "the raw body of a message in the operator console (each view audited)",
    "rules:preview": "preview a candidate rule file on stored traffic in the operator console (what-if, read-only, audited)",
    ADMIN: "everything, including routes not listed in the scope table",
}

_ANY = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _compile(pattern: str) -> re.Pattern[str]:
    tail = ""
    if pattern.endswith("/**"):
        pattern, tail = pattern[:-3], "(?:/.*)?"
    parts = re.split(r"(\{[a-z_]+\})", pattern)
    body = "".join("[^/]+" if re.fullmatch(r"\{[a-z_]+\}", part) else re.escape(part) for part in parts)
    return re.compile(f"^{body}{tail}$")


@dataclass(frozen=True)
class RouteRule:
    methods: frozenset[str]
    pattern: str
    scopes: tuple[str, ...]
    interaction: str  # audited as: create | read | search | operation | update | login | none
    source: str | None = None  # inbound message source, for `iap_messages_total`
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "regex", _compile(self.pattern))

    @property
    def public(self) -> bool:
        return PUBLIC in self.scopes


def _rule(methods: str, pattern: str, scopes: str, interaction: str, source: str | None = None) -> RouteRule:
    """A row: methods comma-separated or `*` (GET brings HEAD with it), the pattern, the scopes space-separated."""
    chosen = _ANY if methods == "*" else frozenset(methods.split(",")) | ({"HEAD"} if "GET" in methods else set())
    return RouteRule(chosen, pattern, tuple(scopes.split()), interaction, source)


ROUTES: tuple[RouteRule, ...] = (
    # before a credential: probes, the API description, the capability statement, the token endpoint itself
    _rule("GET", "/healthz", PUBLIC, "none"),
    _rule("GET", "/readyz", PUBLIC, "none"),
    _rule("GET", "/openapi.json", PUBLIC, "none"),
    _rule("GET", "/docs/**", PUBLIC, "none"),
    _rule("GET", "/redoc", PUBLIC, "none"),
    _rule("GET", "/fhir/metadata", PUBLIC, "none"),
    _rule("POST", "/oauth2/token", PUBLIC, "login"),  # authenticates the client assertion itself (and audits it)
    _rule("GET", "/metrics", "metrics:read", "read"),
    # inbound messages, one scope per source
    _rule("*", "/ingest/nhs111", "ingest:nhs111", "create", "nhs111"),
    _rule("*", "/fhir/$process-message", "ingest:nhs111", "operation", "bars"),
    _rule("*", "/ingest/mhpl", "ingest:mhpl", "create", "mhpl"),
    _rule("*", "/ingest/hl7v2", "ingest:hl7v2", "create", "hl7v2"),
    _rule("*", "/ingest/cleo", "ingest:cleo", "update", "cleo"),
    _rule("GET", "/export/cleo/{task_id}", "ingest:cleo", "read"),
    _rule("*", "/ingest/pcmis", "ingest:pcmis", "create", "pcmis"),
    _rule("*", "/ingest/systmone", "ingest:systmone", "create", "systmone"),
    _rule("POST", "/fhir/QuestionnaireResponse", "measures:write", "create", "questionnaire-response"),
    _rule("*", "/fhir/ServiceRequest/$route", "ingest:referral", "operation", "pathway-referral"),
    _rule("POST", "/fhir/CommunicationRequest", "letters:write", "create"),
    # the CAS queue and its cases
    _rule("GET", "/queue", "cas:operate", "search"),
    _rule("GET", "/queue/summary", "cas:operate", "search"),
    _rule("POST", "/queue/$confirm-risk-level", "cas:operate", "operation"),
    _rule("GET", "/fhir/Task/{task_id}/$explain", "cas:operate fhir:read", "operation"),
    _rule("POST", "/fhir/Task/{task_id}/{operation}", "cas:operate", "operation"),
    _rule("PUT,PATCH,DELETE", "/fhir/Task/{task_id}", "cas:operate", "update"),  # always refused (405, CAS-08)
    # pathway episodes of care
    _rule("GET", "/fhir/EpisodeOfCare/{episode_id}/$explain", "pathway:operate fhir:read", "operation"),
    _rule("GET", "/fhir/ServiceRequest/{request_id}/$explain", "pathway:operate fhir:read", "operation"),
    _rule("POST", "/fhir/EpisodeOfCare/{episode_id}/{operation}", "pathway:operate", "operation"),
    # reading
    _rule("GET", "/fhir/Questionnaire/**", "fhir:read measures:write", "read"),
    _rule("GET", "/fhir/AuditEvent/**", "audit:read", "search"),
    _rule("GET", "/fhir/{type}/{id}/_history/**", "fhir:read", "read"),  # a resource's versions (vread, _history)
    _rule("GET", "/fhir/{type}/{id}/{operation}", "fhir:read", "operation"),
    _rule("GET", "/fhir/{type}/{id}", "fhir:read", "read"),
    _rule("GET", "/fhir/{type}", "fhir:read", "search"),
    _rule("GET", "/reports/**", "reports:read", "search"),
    _rule("GET", "/outbox", "outbox:read", "search"),
    _rule("GET", "/outbox/{delivery_id}", "outbox:read", "read"),
    _rule("POST", "/outbox/{delivery_id}/$replay", "outbox:operate", "operation"),
    # the console's data for ops tools (gateway/api/message_log.py): a raw body also needs messages:raw (checked there)
    _rule("GET", "/ops/channels", "messages:read", "search"),
    _rule("GET", "/ops/outbound", "messages:read outbox:read", "search"),
    _rule("GET", "/ops/messages", "messages:read", "search"),
    _rule("GET", "/ops/messages/{key}", "messages:read", "read"),
    # the operator console (gateway/console): pages need what the API routes behind them need; a signed-in session
    # stands for the bearer credential (gateway.console.gate); a /console/ path not listed needs admin, as anywhere
    _rule("GET", "/console/static/**", PUBLIC, "none"),
    _rule("GET,POST", "/console/sign-in", PUBLIC, "login"),  # checks the API key itself (and audits it)
    _rule("POST", "/console/sign-out", PUBLIC, "none"),  # ends the cookie's session, if any
    _rule("GET", "/console/", "messages:read cas:operate reports:read outbox:read audit:read", "search"),  # what each may see
    _rule("GET", "/console", "messages:read cas:operate reports:read outbox:read audit:read", "none"),
    _rule("GET", "/console/messages/{message_id}/raw", "messages:raw", "read"),
    _rule("GET", "/console/messages/**", "messages:read", "search"),
    _rule("GET", "/console/quarantine/**", "messages:read", "search"),
    _rule("GET", "/console/queue", "cas:operate", "search"),
    _rule("GET", "/console/cases/{task_id}", "cas:operate", "read"),
    _rule("GET", "/console/waitlist", "reports:read", "search"),
    _rule("GET", "/console/letters", "outbox:read", "search"),
    _rule("GET", "/console/letters/{delivery_id}/**", "outbox:read", "read"),
    _rule("POST", "/console/letters/{delivery_id}/replay", "outbox:operate", "operation"),
    _rule("GET", "/console/audit", "audit:read", "search"),
    _rule("GET,POST", "/console/rules", "rules:preview", "search"),  # a what-if run reads stored traffic: audited
    _rule("POST", "/console/rules/csv", "rules:preview", "search"),
)

DEFAULT_RULE = RouteRule(_ANY, "(not listed)", (ADMIN,), "operation")


@lru_cache(maxsize=4096)
def rule_for(method: str, path: str) -> RouteRule:
    """The first row matching (method, path); the admin-only default when none does."""
    for rule in ROUTES:
        if method in rule.methods and rule.regex.match(path):
            return rule
    return DEFAULT_RULE


def check_scopes(granted: frozenset[str], rule: RouteRule) -> bool:
    """True when a client holding `granted` may use a route needing `rule` (any one of its scopes, or admin)."""
    return ADMIN in granted or any(scope in granted for scope in rule.scopes)
