"""Primary care and Talking Therapies pathways: referral routing, episode operations and the clock worker.

Data flow: adapter (ServiceRequest -> PathwayReferral) -> scorer (contained PHQ-9/GAD-7/...) ->
rules (pathway_routing / pathway_steps / pathway_clocks, reading the locality's rule file) ->
FHIR (fhir_mapping.episodes) -> store, in one transaction with a Provenance that names the rule
ids, the inputs and the rule file version. The reply goes out only after the commit.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.orm import Session

from adapters.jsonparse import parse_json_object
from adapters.pathway_referral import parse_pathway_referral
from adapters.problems import GatewayInputError, Kind, Problem
from common.datetimes import parse_source_datetime
from fhir_mapping.episodes import episode_clocks, pathway_task, referral_request
from fhir_mapping.ids import resource_id
from fhir_mapping.pcmis import consent_id, contact_preferences
from fhir_mapping.scoring import check_response, read_response, score_answers
from gateway.cas.cases import provenance
from gateway.cas.rules.ops import parse_parameters
from gateway.measures.responses import ResponseIntake, response_id, response_resources
from gateway.pathways.epr import EprContacts
from gateway.pathways.records import (
    CONTACT_SYSTEM,
    PATHWAY_ACTIVITY,
    Rules,
    _contained,
    _decision_parameters,
    _dialog_plus_in_force,
    _letters_queued,
    _new_episode,
    _not_booked,
    _patient,
    _senior_screening_task,
    _summary,
    wsas_on_file,
)
from gateway.pathways.risks import refused_referral_risks
from gateway.pathways.rules.clocks import clock_due_items
from gateway.pathways.rules.routing import Decision, MeasureFact, route_referral
from gateway.pathways.rules.schema import PrimaryCareRules
from gateway.pathways.rules.steps import EPISODE_OPERATIONS, OPEN_EPISODE, apply_episode_operation
from gateway.pathways.wait_letters import send_wait_letters
from gateway.platform.messages import Inbound, Reply, commit_message, previous, resend_or_refuse
from gateway.platform.security.principal import require_service
from gateway.platform.store.repo import ResourceQuery, get_for_update, get_resource, put_resource, search_resources

__all__ = ["Pathways", "CHANNEL_PATHWAY", "PATHWAY_ACTIVITY", "CONTACT_SYSTEM"]

log = structlog.get_logger("iap.pathways")
CHANNEL_PATHWAY = "pathway-referral"


class Pathways(EprContacts):
    """The pathway service: route a referral, operate on an episode, run the clocks; EPR contacts and the episode store
    come from `EprContacts` and `PathwayStore`."""

    # --- referral routing ---------------------------------------------------------------------------------

    def refer(self, raw: bytes) -> Reply:
        """Route one referral; a re-sent referral (same identifier) gets its original reply and stores nothing. A referral
        refused for any reason has the risk answers of its contained responses acted on all the same (issue 33), and the
        refusal says how."""
        try:
            return self._refer(raw)
        except GatewayInputError as refused:
            acted = refused_referral_risks(ResponseIntake(self.sessions, self.catalogue, self.clock), raw)
            if not acted:
                raise
            raise GatewayInputError([*refused.problems, *acted], stage=refused.stage) from None

    def _refer(self, raw: bytes) -> Reply:
        referral = parse_pathway_referral(raw)
        message_id = f"{referral.system}|{referral.value}"
        original = previous(self.sessions, CHANNEL_PATHWAY, message_id)
        if original is not None:
            return resend_or_refuse(original, raw, "ServiceRequest.identifier")
        rules = self.registry.get(referral.service_id)
        if rules is not None:
            require_service(referral.service_id)  # a referrer bound to one service refers only to it
        if rules is None:
            raise GatewayInputError(
                Problem(
                    Kind.NOT_SUPPORTED,
                    "ServiceRequest.performer.identifier",
                    f"unknown pathway service; known: {sorted(self.registry.services)}",
                )
            )
        read = [read_response(qr, _contained(qr)) for qr in referral.questionnaire_responses]
        problems = [p for _, found in read for p in found]
        if problems:
            raise GatewayInputError(problems)
        # (as sent: its id and answers are read from it; as its model writes it: what is stored; its score)
        scored = [
            (qr, as_fhir, score_answers(*check_response(qr, self.catalogue)))
            for qr, (as_fhir, _) in zip(referral.questionnaire_responses, read, strict=True)
        ]
        measures = {
            s.measure.id: MeasureFact(s.measure.id, s.scores[0].value, s.scores[0].band.code if s.scores[0].band else None)
            for _, _, s in scored
            if s.scores
        }
        now = self.clock.now()
        sr_id = resource_id("ServiceRequest", referral.system, referral.value)
        decision_box: list[Decision] = []

        def write(session: Session) -> list[tuple[dict[str, Any], str | None]]:
            patient = _patient(session, referral)
            patient_ref = f"Patient/{patient['id']}"
            dialog_plus = _dialog_plus_in_force(session, patient["id"], referral.care_plans)
            on_file = wsas_on_file(session, self._codes, patient["id"], referral.received, rules) if "wsas" not in measures else None
            decision = route_referral(referral, rules, measures | ({"wsas-on-file": on_file} if on_file else {}), dialog_plus)
            decision_box.append(decision)
            out: list[tuple[dict[str, Any], str | None]] = [(patient, None)]
            if referral.source == "self" and referral.gp_contact_agreed is not None:
                out.append(
                    (
                        contact_preferences(
                            {"reference": patient_ref},
                            {},
                            referral.gp_contact_agreed,
                            True,
                            referral.received,
                            "the self-referral",
                            get_resource(session, "Consent", consent_id({"reference": patient_ref})),
                        ),
                        None,
                    )
                )
            for qr, as_fhir, result in scored:
                subject = {"reference": patient_ref}
                qr_id = response_id({k: v for k, v in qr.items() if k != "id"} | {"subject": subject})
                stored_form = {k: v for k, v in as_fhir.items() if k != "id"} | {"subject": subject}
                out += [(r, rules.service.id) for r in response_resources(stored_form, result, qr_id, subject, None, now, [])]
            summary = _summary(decision)
            request = referral_request(referral, sr_id, patient_ref, rules.service.name, decision.outcome, summary)
            out.append((request, rules.service.id))
            targets = [request]
            if decision.outcome == "accept":
                episode = _new_episode(referral, rules, decision, sr_id, patient_ref)
                out.append((episode, rules.service.id))
                targets.append(episode)
                if decision.duty_screening:
                    due = referral.received + rules.duty_screening_within  # type: ignore[union-attr]
                    duty = rules.service.teams.by_step.get("duty")
                    out.append(
                        (
                            pathway_task(
                                "duty-screening",
                                "Duty worker telephone screening",
                                f"ServiceRequest/{sr_id}",
                                patient_ref,
                                now,
                                due,
                                duty,
                                ["TT-03"],
                                "Urgent self-referral: telephone screening as a priority",
                                priority="urgent",
                            ),
                            rules.service.id,
                        )
                    )
                if decision.senior_screening:  # TT-07: a column the step table needed is unknown (appendix 1 screening)
                    out.append((_senior_screening_task(decision, rules, sr_id, patient_ref, now), rules.service.id))
            else:
                out += [(r, rules.service.id) for r in _not_booked(request, decision, patient, referral, now)]
            record = provenance(
                request,
                "route-referral",
                f"IAP gateway ({rules.label})",
                decision.rule_ids,
                summary,
                now,
                system=PATHWAY_ACTIVITY,
                policy=rules.policy_uri,
            )
            record["target"] += [{"reference": f"EpisodeOfCare/{t['id']}"} for t in targets if t["resourceType"] == "EpisodeOfCare"]
            out.append((record, rules.service.id))  # all but the Patient and its consent belong to the service
            return _letters_queued(session, out, now)

        def make_reply(stored: list[dict[str, Any]], created: set[str]) -> Reply:
            decision = decision_box[-1]
            by_type = {r["resourceType"]: r for r in reversed(stored)}
            body = _decision_parameters(decision, rules, stored, sr_id)
            made = by_type.get("EpisodeOfCare") or by_type.get("ServiceRequest")
            location = (
                f"/fhir/{made['resourceType']}/{made['id']}/_history/{made['meta']['versionId']}"
                if made
                else f"/fhir/ServiceRequest/{sr_id}"
            )
            return Reply(201, body, {"Location": location})

        inbound = Inbound(CHANNEL_PATHWAY, message_id, raw, rule_set=rules.label)
        again = lambda racing: resend_or_refuse(racing, raw, "ServiceRequest.identifier")  # noqa: E731
        reply = commit_message(self.sessions, inbound, now, write, make_reply, on_race=again)
        if not reply.duplicate:
            log.info("pathway.routed", service=rules.service.id, outcome=reply.body["parameter"][0]["valueCode"])
        return reply

    # --- episode operations -------------------------------------------------------------------------------

    def operate(self, episode_id: str, name: str, raw: bytes) -> dict[str, Any]:
        """Apply operation `name` to an episode; the new EpisodeOfCare, or GatewayInputError and nothing changed."""
        if name not in EPISODE_OPERATIONS:
            raise GatewayInputError(
                Problem(Kind.NOT_SUPPORTED, "operation", f"unknown operation ${name[:40]}; known: {list(EPISODE_OPERATIONS)}")
            )
        params = parse_parameters(parse_json_object(raw, "Parameters"))
        now = self.clock.now()
        with self.sessions.begin() as session:
            found = get_for_update(session, "EpisodeOfCare", episode_id)
            if found is None or found[1] not in self.registry.services:
                raise GatewayInputError(Problem(Kind.NOT_FOUND, "id", f"EpisodeOfCare/{episode_id[:64]} is not a pathway episode"))
            episode, service_id = found
            require_service(service_id)  # a client bound to one service works only its episodes
            rules = self.registry.services[str(service_id)]
            facts = self._facts(session, episode, rules)
            result = apply_episode_operation(name, episode, params, rules, facts, now)
            return self._store_result(session, name, params.string("practitioner") or "", episode, result, rules, now)

    # --- clocks ---------------------------------------------------------------------------------------------

    def tick(self, now: datetime) -> list[str]:
        """Each clock due makes one Task (idempotent across ticks and instances); PC-08 stops are applied. Returns Task ids created."""
        created: list[str] = []
        with self.sessions() as session:
            episodes, _ = search_resources(session, ResourceQuery("EpisodeOfCare", count=100_000))
        for episode in episodes:
            clocks = episode_clocks(episode)
            if not any(not c.get("stopped") for c in clocks.values()):
                continue
            with self.sessions.begin() as session:
                found = get_for_update(session, "EpisodeOfCare", episode["id"])
                if found is None or found[1] not in self.registry.services:
                    continue
                current, service_id = found
                rules = self.registry.services[str(service_id)]
                if isinstance(rules, PrimaryCareRules) and current["status"] in OPEN_EPISODE:
                    updated = self._pc08(session, current, rules, now, None)
                    if updated is not current:
                        current, _ = put_resource(session, updated, now, service_id)
                        put_resource(
                            session,
                            provenance(
                                current,
                                "clock-stop",
                                "IAP gateway",
                                ["PC-08"],
                                "4-week clock stopped (PC-08)",
                                now,
                                system=PATHWAY_ACTIVITY,
                                policy=rules.policy_uri,
                            ),
                            now,
                            service_id,
                        )
                for clock in clock_due_items(episode_clocks(current), now):
                    task = _clock_task(current, clock, rules, now)
                    if get_resource(session, "Task", task["id"]) is not None:
                        continue
                    stored, outcome = put_resource(session, task, now, service_id)
                    if outcome == "created":
                        created.append(stored["id"])
                        put_resource(
                            session,
                            provenance(
                                current,
                                f"clock-due-{clock['name']}",
                                "IAP gateway",
                                [clock["rule"]],
                                f"{rules.clocks[clock['name']].title}: due {clock['due']} -> Task/{stored['id']}",
                                now,
                                system=PATHWAY_ACTIVITY,
                                policy=rules.policy_uri,
                            ),
                            now,
                            service_id,
                        )
        if created:
            log.info("pathway.clocks_due", tasks=len(created))
        send_wait_letters(self.sessions, self.registry, now)  # TT-18: waits over target, one letter per estimate
        return created


def _clock_task(episode: dict[str, Any], clock: dict[str, Any], rules: Rules, now: datetime) -> dict[str, Any]:
    rule = rules.clocks[clock["name"]]
    breach = rule.on_due == "breach"
    summary = f"{rule.title}: {'breached' if breach else 'due'} {clock['due']} (started {clock['start']})"
    team = (episode.get("team") or [{}])[0].get("display")
    return pathway_task(
        f"clock-{clock['name']}",
        rule.title,
        f"EpisodeOfCare/{episode['id']}",
        episode["patient"]["reference"],
        now,
        parse_source_datetime(clock["due"]),
        team,
        [rule.rule],
        summary,
        "urgent" if breach else "routine",
        key=clock["start"],
    )
