"""What-if for a pathway rule file (issue 37): stored pathway referrals routed again with the candidate.

Each referral stored in the window (channel `pathway-referral`) is read from its raw body by the same adapter, its
measures scored by the same scorer, and routed by the same rules (gateway.pathways.rules.routing.route_referral) with
the candidate, inside the caller's read-only transaction. The decision is compared with the one stored: outcome,
step, team and route from the reply the referrer got; the clocks started at referral (PC-06, PC-07, TT-08) from the
episode's first version. Later episode events are not replayed: an episode's operations are people's decisions,
each already recorded with its own rule file version.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from sqlalchemy import Connection, and_, select
from sqlalchemy.orm import Session

from adapters.pathway_referral import PathwayReferral, parse_pathway_referral
from adapters.problems import GatewayInputError
from fhir_mapping.episodes import episode_clocks
from fhir_mapping.ids import resource_id
from fhir_mapping.measures import MeasureCatalogue, load_measures
from fhir_mapping.scoring import check_response, read_response, score_answers
from gateway.pathways.rules.clocks import start_clock
from gateway.pathways.rules.routing import Decision, MeasureFact, route_referral
from gateway.pathways.rules.schema import PrimaryCareRules, TalkingTherapiesRules
from gateway.pathways.rules.steps import OPEN_EPISODE
from gateway.platform.store.models import InboundMessage, ResourceRow, ResourceVersionRow
from gateway.rules.candidate import Candidate, ValueChange
from gateway.rules.whatif_report import CaseChange, WhatIfReport

__all__ = ["replay_pathway"]

CHANNEL_PATHWAY = "pathway-referral"  # gateway.pathways.service.CHANNEL_PATHWAY (not imported: that module writes)
Rules = PrimaryCareRules | TalkingTherapiesRules
_KEYS = ("outcome", "step", "team", "route", "where")


def replay_pathway(connection: Connection, candidate: Candidate, live: Any, report: WhatIfReport) -> WhatIfReport:
    """Route again every referral of the candidate's service stored in the report's window; compare with the stored."""
    rules = candidate.rules
    assert isinstance(rules, PrimaryCareRules | TalkingTherapiesRules)
    catalogue = load_measures()
    session = Session(bind=connection)  # reads only, in the caller's read-only transaction
    query = (
        select(InboundMessage.seq, InboundMessage.raw, InboundMessage.received_at, InboundMessage.response_body)
        .where(
            InboundMessage.channel == CHANNEL_PATHWAY,
            InboundMessage.received_at >= report.since,
            InboundMessage.received_at <= report.now,
            InboundMessage.response_status < 300,
            InboundMessage.rule_set.like(f"{candidate.service_id} pathway %"),
        )
        .order_by(InboundMessage.seq)
    )
    replayed = unreadable = 0
    for row in connection.execute(query).all():
        try:
            referral = parse_pathway_referral(bytes(row.raw))
        except GatewayInputError:
            unreadable += 1
            continue
        replayed += 1
        change = _compare(session, connection, referral, row, rules, catalogue, candidate.changes)
        if change is not None:
            report.cases.append(change)
    return replace(report, replayed=replayed, unreadable=unreadable)


def _stored(response_body: str) -> dict[str, str | None]:
    params = json.loads(response_body).get("parameter", [])
    values: dict[str, str | None] = {key: None for key in _KEYS}
    for p in params:
        if p["name"] in _KEYS:
            values[p["name"]] = p.get("valueCode") or p.get("valueString")
    values["rules"] = " ".join(p["valueCode"] for p in params if p["name"] == "rule")
    values["version"] = next((p["valueString"] for p in params if p["name"] == "rules-version"), None)
    return values


def _clocks(clocks: dict[str, dict[str, Any]]) -> str | None:
    return " ".join(f"{name}={clock['due']}" for name, clock in sorted(clocks.items())) or None


def _compare(
    session: Session,
    connection: Connection,
    referral: PathwayReferral,
    row: Any,
    rules: Rules,
    catalogue: MeasureCatalogue,
    changes: tuple[ValueChange, ...],
) -> CaseChange | None:
    sr_id = resource_id("ServiceRequest", referral.system, referral.value)
    stored_sr = session.get(ResourceRow, ("ServiceRequest", sr_id))
    episode_id = resource_id("EpisodeOfCare", f"ServiceRequest/{sr_id}", "episode")
    episode = connection.execute(
        select(ResourceRow.status, ResourceVersionRow.content)
        .join(
            ResourceVersionRow, and_(ResourceVersionRow.resource_type == ResourceRow.resource_type, ResourceVersionRow.id == ResourceRow.id)
        )
        .where(ResourceRow.resource_type == "EpisodeOfCare", ResourceRow.id == episode_id, ResourceVersionRow.version_id == 1)
    ).first()
    before: dict[str, str | int | None] = dict(_stored(row.response_body))
    before["clocks"] = _clocks(episode_clocks(json.loads(episode.content))) if episode else None
    is_open = episode is not None and episode.status in OPEN_EPISODE
    try:
        decision = _route(session, referral, rules, catalogue, stored_sr.subject_id if stored_sr else None)
    except GatewayInputError as refused:
        after: dict[str, str | int | None] = {"outcome": "refused: " + "; ".join(p.message for p in refused.problems if p.is_error)[:300]}
        return CaseChange(f"ServiceRequest/{sr_id}", CHANNEL_PATHWAY, row.received_at, is_open, ("refused",), before, after, (), ())
    clocks: dict[str, dict[str, Any]] = {}
    for name in decision.clocks if decision.outcome == "accept" else ():
        clocks = start_clock(clocks, name, rules, referral.received)
    after = {key: getattr(decision, key) for key in _KEYS}
    after["rules"] = " ".join(decision.rule_ids)
    after["version"] = rules.label
    after["clocks"] = _clocks(clocks)
    kinds = tuple(
        kind
        for kind, keys in (("route", ("outcome", "route", "where")), ("step", ("step", "team")), ("clock", ("clocks",)))
        if any(before.get(k) != after.get(k) for k in keys)
    )
    if not kinds:
        return None
    differ = set(str(before["rules"] or "").split()) ^ set(decision.rule_ids)
    if "clock" in kinds:  # the rule of each clock whose deadline moves (PC-06, PC-07, TT-08)
        differ |= {rules.clocks[name].rule for name in clocks if name in rules.clocks}
    if not differ:
        differ = set(decision.rule_ids)
    reads = _reads(decision, kinds)
    relevant = [c for c in changes if c.path != "version"]
    inputs = tuple([c for c in relevant if any(c.path.startswith(p) for p in reads)] or relevant)
    return CaseChange(
        f"ServiceRequest/{sr_id}", CHANNEL_PATHWAY, row.received_at, is_open, kinds, before, after, tuple(sorted(differ)), inputs
    )


def _route(session: Session, referral: PathwayReferral, rules: Rules, catalogue: MeasureCatalogue, patient_id: str | None) -> Decision:
    """The candidate's decision, from the facts the live intake looks up (gateway.pathways.service.Pathways.refer)."""
    from gateway.pathways.records import _dialog_plus_in_force, _score_codes, wsas_on_file  # the look-ups intake makes (reads)

    read = [read_response(qr, f"ServiceRequest.contained.where(id='{str(qr.get('id'))[:64]}')") for qr in referral.questionnaire_responses]
    problems = [p for _, found in read for p in found]
    if problems:
        raise GatewayInputError(problems)
    measures: dict[str, MeasureFact] = {}
    for qr in referral.questionnaire_responses:
        scored = score_answers(*check_response(qr, catalogue))
        if scored.scores:
            top = scored.scores[0]
            measures[scored.measure.id] = MeasureFact(scored.measure.id, top.value, top.band.code if top.band else None)
    dialog_plus = _dialog_plus_in_force(session, patient_id, referral.care_plans) if patient_id else False
    on_file = wsas_on_file(session, _score_codes(catalogue), patient_id, referral.received, rules) if patient_id else None
    if on_file and "wsas" not in measures:  # TT-07 functioning column: a WSAS on file, as intake reads it
        measures["wsas-on-file"] = on_file
    return route_referral(referral, rules, measures, dialog_plus)


def _reads(decision: Decision, kinds: tuple[str, ...]) -> tuple[str, ...]:
    """The pathway rule values a decision's changed parts read: exclusions and routes, steps and teams, clocks."""
    reads: list[str] = []
    if "route" in kinds:
        reads += ["exclusions", "routes", "min_age", "age", "practices"]
    if "step" in kinds:
        reads += ["service.teams", "step", "triage_coach", "gad", "phq", "bands", "functioning"]
    if "clock" in kinds:
        reads += ["clocks"]
    return tuple(reads)
