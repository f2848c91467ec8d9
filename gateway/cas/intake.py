"""NHS 111 intake: adapter -> rules -> mapping -> store + reply, in one transaction.

The reply is computed before the commit and stored with the message, and the sender
sees it only after the commit (nothing acknowledged before it is durable). A re-sent
message (same message id, or same BaRS MessageHeader id, and the same content) stores
nothing: the flat JSON gets its original reply back, BaRS gets 409 REC_CONFLICT
`duplicate` as the standard requires. A different message reusing such an id is
refused 422 naming the id (gateway.platform.resends). Two copies racing on PostgreSQL meet the
unique constraints on `inbound_messages`; the loser rolls back and answers as above.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.orm import Session, sessionmaker

from adapters.bars import parse_bars_message
from adapters.mhpl import parse_mhpl_call
from adapters.nhs111_case import parse_nhs111_case
from adapters.problems import GatewayInputError, Kind, Problem
from adapters.referral import Referral
from common.datetimes import to_fhir_instant
from fhir_mapping.cas_referral import TaskPlan, map_cas_referral
from fhir_mapping.ids import resource_id
from fhir_mapping.patients import merge_patient
from fhir_mapping.replies import bars_response_message, batch_response, operation_outcome
from gateway.cas.cases import provenance
from gateway.cas.rules.intake import QueueDecision, decide_intake
from gateway.cas.rules.queue import merge_resent_task
from gateway.cas.rules.schema import RuleRegistry
from gateway.platform.clock import Clock
from gateway.platform.messages import Inbound, Reply, Writes, commit_message, previous, resend_or_refuse
from gateway.platform.resends import refuse_reuse, same_json
from gateway.platform.store.repo import StoredMessage

__all__ = ["Intake", "Reply", "CHANNEL_NHS111", "CHANNEL_BARS", "plan_for", "decide", "detect_kind", "map_offline"]

log = structlog.get_logger("iap.intake")

CHANNEL_NHS111 = "nhs111-case"
CHANNEL_BARS = "bars"
CHANNEL_MHPL = "mhpl"
_ID_ELEMENTS = {CHANNEL_NHS111: "case_id", CHANNEL_MHPL: "call_id"}  # where the flat JSON formats carry their message id


def plan_for(decision: QueueDecision) -> TaskPlan:
    rules = decision.rules
    return TaskPlan(
        priority=decision.priority,
        classification=decision.classification,
        breach_time=decision.breach_time,
        timeframe=decision.timeframe,
        service_name=rules.service.name,
        provider_ods=rules.service.provider_ods,
        rule_set=rules.label,
        rule_ids=decision.rule_ids,
        reasons=decision.reasons,
        specialist_desk=decision.specialist_desk,
    )


def decide(referral: Referral, registry: RuleRegistry) -> QueueDecision:
    """Rules on a parsed referral; raises with every problem (the adapter's and the rules') if it is refused."""
    outcome = decide_intake(referral, registry)
    problems = list(referral.problems) + ([] if isinstance(outcome, QueueDecision) else outcome)
    if not isinstance(outcome, QueueDecision) or any(p.is_error for p in problems):
        if not any(p.is_error for p in problems):  # defensive: never refuse without saying why
            problems.append(Problem(Kind.INVALID, "", "referral could not be placed on a queue"))
        raise GatewayInputError(problems, stage="rules")
    return outcome


class Intake:
    def __init__(self, sessions: sessionmaker[Session], registry: RuleRegistry, clock: Clock) -> None:
        self.sessions = sessions
        self.registry = registry
        self.clock = clock

    # -- flat NHS 111 case JSON ------------------------------------------------------------
    def receive_nhs111_case(self, raw: bytes) -> Reply:
        referral = parse_nhs111_case(raw)
        original = previous(self.sessions, CHANNEL_NHS111, referral.message_id, None)
        if original is not None:
            return _again(CHANNEL_NHS111, original, raw)
        decision = decide(referral, self.registry)
        return self._commit(CHANNEL_NHS111, referral, decision, raw, self._nhs111_reply)

    def _nhs111_reply(self, referral: Referral, stored: list[dict[str, Any]], created: set[str], now: datetime) -> Reply:
        stored = [r for r in stored if r["resourceType"] != "Provenance"]  # the rule trace is ours, not the sender's
        task = stored[0]
        body = batch_response(
            stored, created, [p for p in referral.problems if not p.is_error], resource_id("Bundle", "nhs111-reply", referral.message_id)
        )
        return Reply(201, body, {"Location": f"/fhir/Task/{task['id']}/_history/{task['meta']['versionId']}"})

    # -- MHPL (professional line) calls ---------------------------------------------------------
    def receive_mhpl_call(self, raw: bytes) -> Reply:
        referral = parse_mhpl_call(raw)
        original = previous(self.sessions, CHANNEL_MHPL, referral.message_id)
        if original is not None:
            return _again(CHANNEL_MHPL, original, raw)
        decision = decide(referral, self.registry)
        return self._commit(CHANNEL_MHPL, referral, decision, raw, self._nhs111_reply)

    # -- BaRS $process-message ---------------------------------------------------------------
    def receive_bars(self, raw: bytes, request_id: str | None, correlation_id: str | None) -> Reply:
        stored = previous(self.sessions, CHANNEL_BARS, request_id, None) if request_id and correlation_id else None
        if stored is not None and same_json(stored.raw, raw):
            return _bars_duplicate()  # a re-send, answered before any parsing
        referral = parse_bars_message(raw, request_id, correlation_id)  # a message reusing an id is checked like any other first
        original = stored or previous(self.sessions, CHANNEL_BARS, referral.message_id, referral.header_id)
        if original is not None:
            return self._bars_again(original, referral, raw)
        decision = decide(referral, self.registry)
        return self._commit(CHANNEL_BARS, referral, decision, raw, self._bars_reply)

    def _bars_again(self, original: StoredMessage, referral: Referral, raw: bytes) -> Reply:
        """A message under a stored X-Request-Id or MessageHeader id. That message again: 409 duplicate, as BaRS requires.
        Another message reusing the id (e.g. a header id kept from a template): refused 422 naming the id it reuses."""
        if same_json(original.raw, raw):
            return _bars_duplicate()
        by_request_id = previous(self.sessions, CHANNEL_BARS, referral.message_id, None) is not None
        raise refuse_reuse(CHANNEL_BARS, "header:X-Request-Id" if by_request_id else "MessageHeader.id", original.seq)

    def _bars_reply(self, referral: Referral, stored: list[dict[str, Any]], created: set[str], now: datetime) -> Reply:
        task, service_request = stored[0], next(r for r in stored if r["resourceType"] == "ServiceRequest")
        body = bars_response_message(
            request_id=referral.message_id,
            original_bundle_id=referral.source_id,
            our_endpoint=f"https://fhir.nhs.uk/Id/dos-service-id|{referral.destination}",
            reply_to=referral.reply_to,
            stored=[service_request, task],
            focus=service_request,
            warnings=[p for p in referral.problems if not p.is_error],
            timestamp=to_fhir_instant(now),
        )
        return Reply(200, body)

    # -- shared ------------------------------------------------------------------------------
    def _commit(
        self,
        channel: str,
        referral: Referral,
        decision: QueueDecision,
        raw: bytes,
        make_reply: Callable[[Referral, list[dict[str, Any]], set[str], datetime], Reply],
    ) -> Reply:
        now = self.clock.now()
        if decision.warnings:  # the rules' warnings (e.g. CAS-06 unknown caller service) go back with the adapter's
            referral = replace(referral, problems=referral.problems + decision.warnings)
        resources = map_cas_referral(referral, plan_for(decision), now).as_json()
        service_id = decision.rules.service.id
        inbound = Inbound(
            channel=channel,
            message_id=referral.message_id,
            raw=raw,
            header_id=referral.header_id,
            correlation_id=referral.correlation_id,
            rule_set=decision.rules.label,
            unused=referral.unused,
        )
        # every resource of the case belongs to its service; the Patient to every service holding it (gateway.platform.store.visibility)
        owned = [(r, None if r["resourceType"] == "Patient" else service_id) for r in reversed(resources)]
        planned = _planned_writes(owned, decision, now)
        reply = commit_message(
            self.sessions,
            inbound,
            now,
            write=lambda _session: planned,
            make_reply=lambda stored, created: make_reply(referral, stored, created, now),
            on_race=(
                (lambda original: self._bars_again(original, referral, raw))
                if channel == CHANNEL_BARS
                else (lambda original: _again(channel, original, raw))
            ),
            expected=planned,
            merge=_never_downgrade,
        )
        if not reply.duplicate:
            log.info(
                "message.accepted",
                channel=channel,
                message=_digest(referral.message_id),
                service=service_id,
                rules=list(decision.rule_ids),
                priority=decision.priority,
                warnings=[p.element for p in referral.problems if not p.is_error],
                unused=len(referral.unused),
            )
        return reply


def _planned_writes(writes: Writes, decision: QueueDecision, now: datetime) -> Writes:
    """The Task first (it leads the reply), then the rest, then the rule trace of the intake decision."""
    trace = provenance(writes[0][0], "intake", "iap-gateway intake rules", decision.rule_ids, "; ".join(decision.reasons), now)
    return [*writes, (trace, decision.rules.service.id)]


def _never_downgrade(stored: dict[str, Any], resource: dict[str, Any]) -> dict[str, Any]:
    """CAS-08 on re-sent referrals: an existing case keeps its history and can only become more urgent.

    Applied by `put_resources` to the version it has locked, so no other writer can change the case in between.
    A known Patient is updated with what the referral sends (fhir_mapping.patients.merge_patient): what another source
    gave it and this one does not send (an EPR's local number, the NHS number's verification status) is kept, so that
    source still finds its patient (issue 32). The rest of a referral (Encounter, ...) is written as sent; the rule
    trace is unchanged by the merge (it names the Task and the message's time, not the Task's content).
    """
    if resource["resourceType"] == "Patient":
        return merge_patient(stored, resource)
    return merge_resent_task(stored, resource) if resource["resourceType"] == "Task" else resource


def _again(channel: str, original: StoredMessage, raw: bytes) -> Reply:
    """A flat JSON message under a stored id: its original reply when it is that message again (however re-serialised),
    else refused 422 naming the id: a different case reusing an accepted case id is never taken for a re-send."""
    return resend_or_refuse(original, raw, _ID_ELEMENTS[channel])


def _bars_duplicate() -> Reply:
    problem = Problem(Kind.DUPLICATE, "header:X-Request-Id", "the message has been identified as having already been processed")
    return Reply(409, operation_outcome([problem]), duplicate=True)


def _digest(value: str) -> str:
    """Message ids in logs as a short digest: enough to correlate, nothing a reader could misuse."""
    return hashlib.sha256(value.encode()).hexdigest()[:12]


def detect_kind(raw: bytes) -> str:
    """'bars' for a FHIR Bundle, else 'nhs111' (the flat case JSON). Cheap sniff; the adapters do the real checks."""
    head = raw[:4096].decode("utf-8", "replace")
    return CHANNEL_BARS if '"resourceType"' in head and '"Bundle"' in head else CHANNEL_NHS111


def map_offline(raw: bytes, registry: RuleRegistry, received_at: datetime, kind: str | None = None) -> dict[str, Any]:
    """What `raw` becomes, without a store: a collection Bundle of the mapped resources (the `map` CLI, golden tests)."""
    from fhir_mapping.bundles import bundle_of

    kind = kind or detect_kind(raw)
    if kind not in (CHANNEL_NHS111, CHANNEL_BARS, CHANNEL_MHPL):
        raise ValueError(f"map_offline maps {CHANNEL_NHS111}, {CHANNEL_BARS} or {CHANNEL_MHPL} input, not {kind!r}")
    if kind == CHANNEL_BARS:
        # offline there are no transport headers: derive stable ones from the content
        digest = hashlib.sha256(raw).hexdigest()
        request_id = f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"
        referral = parse_bars_message(raw, request_id, request_id)
    elif kind == CHANNEL_MHPL:
        referral = parse_mhpl_call(raw)
    else:
        referral = parse_nhs111_case(raw)
    decision = decide(referral, registry)
    resources = map_cas_referral(referral, plan_for(decision), received_at).as_json()
    return bundle_of(
        resources, "collection", resource_id("Bundle", referral.source_system, referral.source_id), to_fhir_instant(received_at)
    )
