"""Primary care and Talking Therapies pathways: referral routing, episode operations and the clock worker.

Data flow: adapter (ServiceRequest -> PathwayReferral) -> scorer (contained PHQ-9/GAD-7/...) ->
rules (pathway_routing / pathway_steps / pathway_clocks, reading the locality's rule file) ->
FHIR (fhir_mapping.episodes) -> store, in one transaction with a Provenance that names the rule
ids, the inputs and the rule file version. The reply goes out only after the commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.orm import Session, sessionmaker

from adapters.jsonparse import parse_json_object
from adapters.pathway_referral import PathwayReferral, parse_pathway_referral
from adapters.pcmis import PcmisContact
from adapters.problems import GatewayInputError, Kind, Problem
from adapters.systmone import SystmOneContact
from fhir_mapping import codes
from fhir_mapping.datetimes import parse_source_datetime, to_fhir_instant
from fhir_mapping.episodes import (
    STEP_DISPLAY,
    episode_clocks,
    episode_of_care,
    letter_request,
    pathway_task,
    referral_request,
    transfer_request,
    with_clocks,
)
from fhir_mapping.fhir import to_json_dict
from fhir_mapping.ids import resource_id
from fhir_mapping.measures import MeasureCatalogue
from fhir_mapping.patients import merge_patient, patient_resource
from fhir_mapping.pcmis import consent_id, contact_preferences
from fhir_mapping.scoring import check_response, read_response, score_answers
from gateway.cases import provenance
from gateway.clock import Clock
from gateway.messages import Inbound, Reply, commit_message, previous, resend_or_refuse
from gateway.outbox.letters import queue_letter
from gateway.responses import response_id, response_resources
from gateway.rules.cas_ops import Params, parse_parameters
from gateway.rules.pathway_clocks import Pc08Facts, clock_due_items, pc08_stop_time, running, start_clock, stop_clock
from gateway.rules.pathway_routing import Decision, MeasureFact, route_referral
from gateway.rules.pathway_schema import PathwayRegistry, PrimaryCareRules, TalkingTherapiesRules
from gateway.rules.pathway_steps import (
    EPISODE_OPERATIONS,
    MISSABLE_IN_TREATMENT,
    OPEN_EPISODE,
    EpisodeFacts,
    Letter,
    StepResult,
    apply_episode_operation,
    current_step,
)
from gateway.security.principal import allowed_service, require_service
from gateway.store.repo import ResourceQuery, find_by_identifier, get_for_update, get_resource, put_resource, search_resources
from gateway.wait_letters import send_wait_letters

__all__ = ["Pathways", "CHANNEL_PATHWAY", "PATHWAY_ACTIVITY", "CONTACT_SYSTEM"]

log = structlog.get_logger("iap.pathways")
CHANNEL_PATHWAY = "pathway-referral"
PATHWAY_ACTIVITY = f"{codes.GATEWAY_BASE}/CodeSystem/pathway-operation"
CONTACT_SYSTEM = f"{codes.GATEWAY_BASE}/CodeSystem/pathway-contact"
OUTCOME_SYSTEM = f"{codes.GATEWAY_BASE}/CodeSystem/contact-outcome"
STEP_SYSTEM = f"{codes.GATEWAY_BASE}/CodeSystem/pathway-step"
CARE_PLAN_CATEGORY = f"{codes.GATEWAY_BASE}/CodeSystem/care-plan-category"
Rules = PrimaryCareRules | TalkingTherapiesRules


class Pathways:
    def __init__(self, sessions: sessionmaker[Session], registry: PathwayRegistry, catalogue: MeasureCatalogue, clock: Clock) -> None:
        self.sessions = sessions
        self.registry = registry
        self.catalogue = catalogue
        self.clock = clock
        self._codes = _score_codes(catalogue)

    # --- referral routing ---------------------------------------------------------------------------------

    def refer(self, raw: bytes) -> Reply:
        """Route one referral; a re-sent referral (same identifier) gets its original reply and stores nothing."""
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
            on_file = self._wsas_on_file(session, patient["id"], referral.received, rules) if "wsas" not in measures else None
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

    def _store_result(
        self,
        session: Session,
        name: str,
        who: str,
        before: dict[str, Any],
        result: StepResult,
        rules: Rules,
        now: datetime,
        contact_written_by_caller: bool = False,
        pending: Sequence[dict[str, Any]] = (),
    ) -> dict[str, Any]:
        episode = result.episode
        patient_ref = episode["patient"]["reference"]
        if result.contact is not None and not contact_written_by_caller:
            encounter = _contact_encounter(before, result.contact, rules)
            if get_resource(session, "Encounter", encounter["id"]) is not None:  # a re-sent contact changes nothing
                return before
            put_resource(session, encounter, now, rules.service.id)
        if episode["status"] == "active" and rules.kind == "primary-care":
            episode = self._pc08(session, episode, rules, now, result, pending)  # type: ignore[arg-type]
        stored, _ = put_resource(session, episode, now, rules.service.id)
        request = get_resource(session, "ServiceRequest", episode["referralRequest"][0]["reference"].split("/", 1)[1]) or {}
        patient = get_resource(session, "Patient", patient_ref.split("/", 1)[1]) or {}
        for letter in result.letters:  # through the outbox (issue 7), in this transaction
            queue_letter(session, _letter(letter, stored, request, patient, now), now, rules.service.id)
        for work in result.work:
            put_resource(
                session,
                pathway_task(
                    work.kind,
                    work.display,
                    f"EpisodeOfCare/{stored['id']}",
                    patient_ref,
                    now,
                    None,
                    None,
                    list(work.rule_ids),
                    work.summary,
                    work.priority,
                    key=to_fhir_instant(now),
                ),
                now,
                rules.service.id,
            )
        if result.transfer is not None and request:
            route, where = result.transfer
            put_resource(session, transfer_request(request, route, where, now, result.rule_ids, result.summary), now, rules.service.id)
        if result.flag:
            put_resource(session, _flag(stored, result.flag, now), now, rules.service.id)
        put_resource(
            session,
            provenance(stored, name, who, result.rule_ids, result.summary, now, system=PATHWAY_ACTIVITY, policy=rules.policy_uri),
            now,
            rules.service.id,
        )
        log.info("pathway.operation", operation=name, rules=result.rule_ids, status=stored["status"])
        return stored

    def _facts(self, session: Session, episode: dict[str, Any], rules: Rules) -> EpisodeFacts:
        contacts, _ = search_resources(
            session, ResourceQuery("Encounter", tokens=[("episode-of-care", None, f"EpisodeOfCare/{episode['id']}")], count=10_000)
        )
        step = current_step(episode)
        parsed = [_contact_of(c) for c in contacts]
        assessed = any(k == "assessment" and o == "attended" for k, o, _, _ in parsed)
        first_treatment = min((w for k, o, _, w in parsed if k == "assessment" and o == "attended"), default=None)
        patient_id = episode["patient"]["reference"].split("/", 1)[1]
        request = get_resource(session, "ServiceRequest", episode["referralRequest"][0]["reference"].split("/", 1)[1]) or {}
        agreed = next((e["valueBoolean"] for e in request.get("extension", []) if e["url"].endswith("/gp-contact-agreed")), None)
        return EpisodeFacts(
            sessions_at_step=sum(
                1 for k, o, s, _ in parsed if s == step and o == "attended" and k in ("assessment", "treatment", "mhp-session")
            ),
            dna_in_treatment=sum(
                1
                for k, o, _, w in parsed
                if o != "attended" and first_treatment is not None and w > first_treatment and k in MISSABLE_IN_TREATMENT
            ),
            assessed=assessed,
            treatments_attended=sum(1 for k, o, _, _ in parsed if k == "treatment" and o == "attended"),
            dialog_plus_in_force=_dialog_plus_in_force(session, patient_id, ()),
            dialog_means=tuple(v for _, v in self._measure_values(session, patient_id, "dialog", "sqol-mean")),
            self_referred=any(c["code"] == "self" for cat in request.get("category", []) for c in cat.get("coding", [])),
            gp_contact_agreed=agreed,
            outcome_measures=self._episode_measures(session, patient_id, rules, parse_source_datetime(episode["period"]["start"])),
            failed_booking_attempts=sum(1 for k, o, _, _ in parsed if k == "booking-attempt" and o == "failed"),  # TT-17
        )

    def _wsas_on_file(self, session: Session, patient_id: str, referred: datetime, rules: Rules) -> MeasureFact | None:
        """TT-07: the patient's latest WSAS total on file, completed within `functioning_on_file_within` before the referral."""
        if not isinstance(rules, TalkingTherapiesRules):
            return None
        since = referred - rules.functioning_on_file_within
        observations, _ = search_resources(session, ResourceQuery("Observation", patient=patient_id, count=10_000))
        found: list[tuple[datetime, float, str]] = []
        for obs in observations:
            coding: dict[str, Any] = next(iter(obs["code"].get("coding", [])), {})
            if self._codes.get((coding.get("system"), str(coding.get("code")))) == ("wsas", "total") and obs.get("effectiveDateTime"):
                when = parse_source_datetime(obs["effectiveDateTime"])
                if since <= when <= referred and (obs.get("valueQuantity") or {}).get("value") is not None:
                    found.append((when, float(obs["valueQuantity"]["value"]), obs["id"]))
        if not found:
            return None
        when, value, obs_id = max(found)
        return MeasureFact("wsas", value, None, on_file=f"Observation/{obs_id} of {when.date().isoformat()}")

    def _episode_measures(self, session: Session, patient_id: str, rules: Rules, referred: datetime) -> frozenset[str]:
        """PC-14: which of the service's outcome measures were scored for the patient in the episode (from
        `measures_before_referral` before the referral, as PC-08 counts them)."""
        if not isinstance(rules, PrimaryCareRules):
            return frozenset()
        since = referred - rules.measures_before_referral
        return frozenset(m for m in rules.baseline_measures if any(w >= since for w, _ in self._measure_values(session, patient_id, m)))

    def _measure_values(
        self, session: Session, patient_id: str, measure: str, score: str | None = None, pending: Sequence[dict[str, Any]] = ()
    ) -> list[tuple[datetime, float]]:
        """(effective, value) of the patient's stored scores of `measure` (one score id, or any), oldest first; with
        `pending`, the Observations of the patient about to be written in this transaction (an EPR row's own scores)."""
        observations, _ = search_resources(session, ResourceQuery("Observation", patient=patient_id, count=10_000))
        out = []
        for obs in [*observations, *_pending_of(pending, "Observation", patient_id)]:
            for coding in obs["code"].get("coding", []):
                found = self._codes.get((coding.get("system"), coding.get("code")))
                if found and found[0] == measure and (score is None or found[1] == score) and obs.get("effectiveDateTime"):
                    out.append((parse_source_datetime(obs["effectiveDateTime"]), float(obs["valueQuantity"]["value"])))
                    break
        return sorted(out)

    def _pc08(
        self,
        session: Session,
        episode: dict[str, Any],
        rules: PrimaryCareRules,
        now: datetime,
        result: StepResult | None,
        pending: Sequence[dict[str, Any]] = (),
    ) -> dict[str, Any]:
        """PC-08: stop the 4-week clock once a meaningful assessment, a baseline measure and an intervention or care plan exist
        (`pending`: resources about to be written in this transaction, which count as stored)."""
        clocks = episode_clocks(episode)
        if not running(clocks, "pcmhh-4-week-wait"):
            return episode
        start = parse_source_datetime(clocks["pcmhh-4-week-wait"]["start"])
        on_episode = f"EpisodeOfCare/{episode['id']}"
        contacts, _ = search_resources(session, ResourceQuery("Encounter", tokens=[("episode-of-care", None, on_episode)], count=10_000))
        contacts += [r for r in pending if r["resourceType"] == "Encounter" and {"reference": on_episode} in r.get("episodeOfCare", [])]
        parsed = [_contact_of(c) for c in contacts]
        assessment = min((w for k, o, s, w in parsed if k == "assessment" and o == "attended" and s == "pcmhh"), default=None)
        intervention = min((w for k, o, s, w in parsed if k == "treatment" and o == "attended" and s == "pcmhh"), default=None)
        patient_id = episode["patient"]["reference"].split("/", 1)[1]
        lookback = start - rules.measures_before_referral  # a DIALOG+ done by the MHP just before the step up counts (SOP 4.8)
        baselines = [
            w for m in rules.baseline_measures for w, _ in self._measure_values(session, patient_id, m, pending=pending) if w >= lookback
        ]
        plans = _dialog_plus_times(session, patient_id, lookback, pending)
        candidates = [t for t in (intervention, min(plans, default=None)) if t is not None]
        facts = Pc08Facts(assessment, min(baselines, default=None), min(candidates, default=None))
        stop = pc08_stop_time(facts)
        if stop is None:
            return episode
        clocks = stop_clock(
            clocks, "pcmhh-4-week-wait", max(stop, start), "assessment, baseline measure and intervention/care plan recorded"
        )
        if result is not None:
            result.because(
                "PC-08", "the 4-week clock stops: assessment, baseline outcome measure and intervention or care plan all recorded"
            )
        return with_clocks(episode, clocks)

    # --- contacts recorded in the EPR (PCMIS) -----------------------------------------------------------------

    def link_pcmis_contact(
        self, session: Session, contact: PcmisContact, patient: dict[str, Any], resources: list[dict[str, Any]], now: datetime
    ) -> tuple[list[dict[str, Any]], list[Problem]]:
        """A PCMIS contact on the patient's open Talking Therapies episode, in the row's transaction: recorded on it as
        $record-contact records one (TT-08/TT-09/TT-10 clocks, TT-12 caps, TT-13 DNAs, TT-14 letters), and the row's
        Encounter joins the episode. The row's resources come back (the Encounter joined), with any warning.

        Nothing is guessed: with no open episode for the patient (a client bound to a service: of that service) the
        contact stays on its own; with several, or dated before the episode began (an export's history), it stays on
        its own with a warning; when the rules refuse it (a TT-12 session past the standard cap: PCMIS carries no
        supervisor agreement) it joins the episode uncounted, with a warning. In each case the contact is stored and
        the episode is left as it was. A service cancellation joins the episode but is no missed session.
        """
        found = self._one_open_episode(session, patient["id"], TalkingTherapiesRules, contact.contact_time)
        if isinstance(found, list):
            return resources, found
        episode, rules = found
        facts = self._facts(session, episode, rules)
        kind = (
            "treatment"
            if contact.appointment_type == "assessment-and-treatment" and facts.assessed
            else _PCMIS_KIND[contact.appointment_type]
        )
        outcome = _PCMIS_OUTCOME.get(contact.attendance)
        if outcome is None:  # cancelled by the service: on the episode, but no contact of the patient's
            return _with_joined(resources, episode, None), []
        return self._record_epr_contact(
            session, "PCMIS", contact.therapist, episode, rules, facts, kind, outcome, contact.contact_time, resources, now
        )

    def link_systmone_contact(
        self, session: Session, contact: SystmOneContact, patient: dict[str, Any], resources: list[dict[str, Any]], now: datetime
    ) -> tuple[list[dict[str, Any]], list[Problem]]:
        """A SystmOne contact on the patient's open primary care episode, in the row's transaction: recorded on it as
        $record-contact records one, and the row's Encounter joins the episode. The row's own scores and DIALOG+ care
        plan count at once towards the 4-week clock's stop (PC-08), as if already stored.

        The kind of contact comes from who held it (`clinician_role`): an MHP's is an MHP session (PC-05 counts them);
        at the hub (PCMHH) the first is the assessment and later ones are interventions; a triage coach's (MHWBTC) is
        a patient contact. A row is an attended contact: the service records its contacts in these templates (RDaSH
        PCMHS SOP 4.11), and the extract has no attendance column. The CTV3 code does not decide the hub's assessment:
        after MHP sessions the hub's first contact is coded XaZrH (SOP 4.11). As for PCMIS, nothing is guessed: no
        open episode (of the acting client's service, if it is bound to one) leaves the contact on its own; several, or a contact
        dated before the episode began, leave it on its own with a warning; one the rules refuse (an MHP's 5th session
        needs a step-up review, PC-05, which the template does not carry) joins the episode uncounted, with a warning.
        """
        found = self._one_open_episode(session, patient["id"], PrimaryCareRules, contact.contact_time)
        if isinstance(found, list):
            return resources, found
        episode, rules = found
        facts = self._facts(session, episode, rules)
        kind = _SYSTMONE_KIND.get(contact.clinician_role) or ("treatment" if facts.assessed else "assessment")
        return self._record_epr_contact(
            session, "SystmOne", contact.clinician, episode, rules, facts, kind, "attended", contact.contact_time, resources, now
        )

    def _record_epr_contact(
        self,
        session: Session,
        source: str,
        clinician: str,
        episode: dict[str, Any],
        rules: Rules,
        facts: EpisodeFacts,
        kind: str,
        outcome: str,
        when: datetime,
        resources: list[dict[str, Any]],
        now: datetime,
    ) -> tuple[list[dict[str, Any]], list[Problem]]:
        """An EPR row's contact recorded on the episode as $record-contact records one; its Encounter joins the episode,
        counted, or uncounted with a warning when the rules refuse it. The row's other resources count as stored."""
        params = {"kind": kind, "outcome": outcome, "date": to_fhir_instant(when)}
        who = source
        if clinician.strip():  # the EPR may leave it blank: the contact is recorded all the same
            params["practitioner"], who = clinician, f"{source}: {clinician}"
        try:
            result = apply_episode_operation("record-contact", episode, Params(params), rules, facts, now)
        except GatewayInputError as refused:
            reason = refused.first_error.message if refused.first_error else str(refused)
            warning = _not_recorded(_PATHWAY_NAME[type(rules)], f"EpisodeOfCare/{episode['id']} refuses it: {reason}")
            return _with_joined(resources, episode, None), [warning]
        written = _with_joined(resources, episode, result.contact)
        self._store_result(session, "record-contact", who, episode, result, rules, now, True, pending=written)
        log.info("pathway.epr_contact", service=rules.service.id, kind=kind, outcome=outcome, rules=result.rule_ids)
        return written, []

    def _one_open_episode(
        self, session: Session, patient_id: str, kind: type[TalkingTherapiesRules] | type[PrimaryCareRules], when: datetime
    ) -> tuple[dict[str, Any], Any] | list[Problem]:
        """The patient's one open episode of this kind of pathway (locked), or the warnings why an EPR's contact is left
        on its own (none when there is no such episode)."""
        pathway = _PATHWAY_NAME[kind]
        episodes = self._open_episodes(session, patient_id, kind)
        if not episodes:
            return []
        if len(episodes) > 1:
            named = ", ".join(f"EpisodeOfCare/{e['id']}" for e, _ in episodes)
            return [_not_recorded(pathway, f"the patient has {len(episodes)} open {pathway} episodes ({named})")]
        episode, rules = episodes[0]
        if when < parse_source_datetime(episode["period"]["start"]):  # history from an earlier course of care
            return [_not_recorded(pathway, f"it is dated before EpisodeOfCare/{episode['id']} began ({episode['period']['start']})")]
        return episode, rules

    def _open_episodes(
        self, session: Session, patient_id: str, kind: type[TalkingTherapiesRules] | type[PrimaryCareRules]
    ) -> list[tuple[dict[str, Any], Any]]:
        """The patient's open episodes of this kind of pathway (locked for this transaction), of the acting client's service if bound."""
        bound = allowed_service(None)
        found, _ = search_resources(session, ResourceQuery("EpisodeOfCare", patient=patient_id, status=list(OPEN_EPISODE), count=100))
        out = []
        for candidate in found:
            locked = get_for_update(session, "EpisodeOfCare", candidate["id"])
            rules = self.registry.services.get(str(locked[1])) if locked else None
            if locked and isinstance(rules, kind) and bound in (None, locked[1]) and locked[0]["status"] in OPEN_EPISODE:
                out.append((locked[0], rules))
        return out

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


# --- helpers ------------------------------------------------------------------------------------------------


def _score_codes(catalogue: MeasureCatalogue) -> dict[tuple[str | None, str], tuple[str, str]]:
    """(system, code) of each score's first code -> (measure id, score id): to read stored Observations back."""
    out: dict[tuple[str | None, str], tuple[str, str]] = {}
    for measure in catalogue:
        for spec in measure.spec.scores:
            for code in spec.codes:
                out.setdefault((code.system, code.code), (measure.id, spec.id))
    return out


def _contained(resource: dict[str, Any]) -> str:
    """Where a contained resource sits in the referral, as FHIRPath (what a refusal names)."""
    return f"ServiceRequest.contained.where(id='{str(resource.get('id'))[:64]}')"


def _patient(session: Session, referral: PathwayReferral) -> dict[str, Any]:
    """The referral's Patient merged over the stored one: the Patient holding its NHS number if there is one (a patient an
    EPR registered by its local number keeps its id, issue 32), else the one the NHS number's id names."""
    update = to_json_dict(patient_resource(referral.patient, referral.gp_practice))
    nhs = [i["value"] for i in update.get("identifier", []) if i.get("system") == codes.NHS_NUMBER]
    held = find_by_identifier(session, "Patient", codes.NHS_NUMBER, nhs[0]) if nhs else []
    if held:
        update["id"] = held[0]["id"]
    return merge_patient(held[0] if held else get_resource(session, "Patient", update["id"]), update)


def _dialog_plus_times(session: Session, patient_id: str, since: datetime | None, pending: Sequence[dict[str, Any]] = ()) -> list[datetime]:
    """When each DIALOG+ care plan in force (PC-09: MHS008 and MHS009 recorded -> active) was created (`pending`: care
    plans about to be written in this transaction count too)."""
    plans, _ = search_resources(session, ResourceQuery("CarePlan", patient=patient_id, status=["active"], count=1000))
    plans += [p for p in _pending_of(pending, "CarePlan", patient_id) if p.get("status") == "active"]
    out = []
    for plan in plans:
        if any(c.get("code") == "dialog-plus" for cat in plan.get("category", []) for c in cat.get("coding", [])):
            created = plan.get("created") or (plan.get("period") or {}).get("start")
            moment = parse_source_datetime(created) if isinstance(created, str) and "T" in created else None
            if moment is not None and (since is None or moment >= since):
                out.append(moment)
            elif moment is None and since is None:
                out.append(datetime.min)
    return out


def _pending_of(pending: Sequence[dict[str, Any]], resource_type: str, patient_id: str) -> list[dict[str, Any]]:
    return [r for r in pending if r["resourceType"] == resource_type and r.get("subject", {}).get("reference") == f"Patient/{patient_id}"]


def _dialog_plus_in_force(session: Session, patient_id: str, named: tuple[str, ...]) -> bool:
    """PC-06/PC-09: a DIALOG+ care plan is in force for the patient (a CarePlan named in the referral must be one)."""
    for plan_id in named:
        plan = get_resource(session, "CarePlan", plan_id)
        if plan is None or plan.get("status") != "active":
            raise GatewayInputError(
                Problem(Kind.VALUE, "ServiceRequest.supportingInfo", f"CarePlan/{plan_id[:64]} is not a care plan in force (PC-09)")
            )
    plans, _ = search_resources(session, ResourceQuery("CarePlan", patient=patient_id, status=["active"], count=1000))
    return any(c.get("code") == "dialog-plus" for p in plans for cat in p.get("category", []) for c in cat.get("coding", []))


def _summary(decision: Decision) -> str:
    head = {
        "accept": f"accepted: {STEP_DISPLAY.get(decision.step or '', decision.step)} ({decision.team})",
        "signpost": f"signposted to {decision.where}",
        "redirect": f"redirected ({decision.route}) to {decision.where}",
    }[decision.outcome]
    return f"{head}. " + "; ".join(decision.trace)


def _new_episode(referral: PathwayReferral, rules: Rules, decision: Decision, sr_id: str, patient_ref: str) -> dict[str, Any]:
    clocks: dict[str, dict[str, Any]] = {}
    for name in decision.clocks:
        clocks = start_clock(clocks, name, rules, referral.received)
    episode = episode_of_care(
        resource_id("EpisodeOfCare", f"ServiceRequest/{sr_id}", "episode"),
        rules.kind,
        {"ods": rules.service.provider_ods, "name": rules.service.name},
        decision.step or "screening",
        decision.team or rules.service.name,
        patient_ref,
        sr_id,
        referral.received,
        [],
        decision.rule_ids[-1] if decision.rule_ids else "PC-01",
    )
    return with_clocks(episode, clocks)


def _senior_screening_task(decision: Decision, rules: Rules, sr_id: str, patient_ref: str, now: datetime) -> dict[str, Any]:
    """TT-07 (appendix 1): a senior clinician screens a referral the step table could not fully decide."""
    unknown = [c for c in ("functioning", "risk") if decision.columns and getattr(decision.columns, c).value is None]
    return pathway_task(
        "senior-screening",
        "Screening by a senior clinician",
        f"ServiceRequest/{sr_id}",
        patient_ref,
        now,
        None,
        rules.service.teams.by_step.get(decision.step or "") or rules.service.name,
        ["TT-07"],
        f"Severe score with {' and '.join(unknown) or 'a column'} unknown: confirm {decision.step} or step 4/5 (TT-07 step table)",
    )


def _not_booked(
    request: dict[str, Any], decision: Decision, patient: dict[str, Any], referral: PathwayReferral, now: datetime
) -> list[dict[str, Any]]:
    """PC-13 / TT-07 / TT-04: the onward referral, the Task to make it, and the letters (referrer, patient, GP)."""
    route, where = decision.route or "signpost", decision.where or ""
    transfer = transfer_request(request, route, where, now, decision.rule_ids, f"{decision.outcome} to {where}")
    patient_ref = request["subject"]["reference"]
    out = [transfer]
    if route != "signpost":
        out.append(
            pathway_task(
                "transfer-of-care",
                "Make the onward referral",
                f"ServiceRequest/{transfer['id']}",
                patient_ref,
                now,
                None,
                None,
                decision.rule_ids,
                f"Refer to {where} (no wrong door)",
                priority="urgent" if route in ("crisis", "access-and-assessment") else "routine",
            )
        )
    letter = Letter(
        "signposting",
        "Signposting / onward referral",
        to_gp=decision.inform_gp,
        to_referrer=referral.source != "self",
        copy_to_patient=referral.copy_to_patient,
        lines=(f"The referral was not booked: {decision.outcome} to {where}",),
        rule_ids=tuple(decision.rule_ids),
    )
    out.append(_letter(letter, None, request, patient, now, about=[f"ServiceRequest/{request['id']}", f"ServiceRequest/{transfer['id']}"]))
    return out


def _letters_queued(
    session: Session, out: list[tuple[dict[str, Any], str | None]], now: datetime
) -> list[tuple[dict[str, Any], str | None]]:
    """Letter requests go through the outbox once what they report is stored (all in the caller's transaction)."""
    for resource, service_id in out:
        if resource["resourceType"] != "CommunicationRequest":
            put_resource(session, resource, now, service_id)
    return [(queue_letter(session, r, now, s), s) if r["resourceType"] == "CommunicationRequest" else (r, s) for r, s in out]


def _letter(
    letter: Letter,
    episode: dict[str, Any] | None,
    request: dict[str, Any],
    patient: dict[str, Any],
    now: datetime,
    about: list[str] | None = None,
) -> dict[str, Any]:
    """A letter request addressed from the letter's rule: GP practice, referrer, copy to the patient (TT-14)."""
    recipients: list[dict[str, Any]] = []
    gp = next(iter(patient.get("generalPractitioner", [])), None)
    if letter.to_gp and gp:
        recipients.append(gp)
    requester = request.get("requester")
    if letter.to_referrer and requester:
        recipients.append(requester)
    copy = next((e["valueBoolean"] for e in request.get("extension", []) if e["url"].endswith("/letter-copy-to-patient")), True)
    if letter.copy_to_patient and copy:
        recipients.append({"reference": f"Patient/{patient['id']}"})
    focus = f"EpisodeOfCare/{episode['id']}" if episode else f"ServiceRequest/{request['id']}"
    refs = about or [focus, f"ServiceRequest/{request['id']}"]
    return letter_request(
        letter.letter_type,
        letter.display,
        f"Patient/{patient['id']}",
        recipients,
        list(dict.fromkeys(refs)),
        now,
        list(letter.rule_ids),
        list(letter.lines),
        key=f"{focus}#{to_fhir_instant(now)}",
    )


def _decision_parameters(decision: Decision, rules: Rules, stored: list[dict[str, Any]], sr_id: str) -> dict[str, Any]:
    params: list[dict[str, Any]] = [{"name": "outcome", "valueCode": decision.outcome}]
    if decision.step:
        params.append({"name": "step", "valueCode": decision.step})
    if decision.team:
        params.append({"name": "team", "valueString": decision.team})
    if decision.route:
        params += [{"name": "route", "valueCode": decision.route}, {"name": "where", "valueString": decision.where or ""}]
    params.append({"name": "rules-version", "valueString": rules.label})
    if decision.columns is not None:  # TT-07: the step table's three columns and which decided
        for column in ("severity", "functioning", "risk"):
            params.append({"name": column, "valueString": str(getattr(decision.columns, column))})
        params += [{"name": "decided-by", "valueCode": column} for column in decision.decided_by]
    params += [{"name": "rule", "valueCode": rule} for rule in decision.rule_ids]
    params += [{"name": "reason", "valueString": line} for line in decision.trace]
    params.append({"name": "referral", "valueReference": {"reference": f"ServiceRequest/{sr_id}"}})
    for resource in stored:
        if resource["resourceType"] in ("EpisodeOfCare", "Task", "CommunicationRequest") or (
            resource["resourceType"] == "ServiceRequest" and resource["id"] != sr_id
        ):
            name = {"EpisodeOfCare": "episode", "Task": "task", "CommunicationRequest": "letter", "ServiceRequest": "transfer"}
            params.append(
                {"name": name[resource["resourceType"]], "valueReference": {"reference": f"{resource['resourceType']}/{resource['id']}"}}
            )
    return {"resourceType": "Parameters", "parameter": params}


def _contact_encounter(episode: dict[str, Any], contact: dict[str, Any], rules: Rules) -> dict[str, Any]:
    when = to_fhir_instant(contact["when"])
    kind, outcome = contact["kind"], contact["outcome"]
    encounter = {
        "resourceType": "Encounter",
        "id": resource_id("Encounter", f"EpisodeOfCare/{episode['id']}", f"{kind}#{outcome}#{when}"),
        "status": "finished" if outcome == "attended" else "cancelled",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB", "display": "ambulatory"},
        "type": _contact_types(contact),
        "subject": episode["patient"],
        "episodeOfCare": [{"reference": f"EpisodeOfCare/{episode['id']}"}],
        "period": {"start": when},
        "serviceProvider": episode["managingOrganization"],
    }
    if contact.get("practitioner"):
        encounter["participant"] = [{"individual": {"display": contact["practitioner"]}}]
    return encounter


def _contact_types(contact: dict[str, Any]) -> list[dict[str, Any]]:
    """A pathway contact's kind, outcome and step, as Encounter.type codings (what `_contact_of` reads back)."""
    return [
        {"coding": [{"system": CONTACT_SYSTEM, "code": contact["kind"]}]},
        {"coding": [{"system": OUTCOME_SYSTEM, "code": contact["outcome"]}]},
        {"coding": [{"system": STEP_SYSTEM, "code": contact["step"]}]},
    ]


# PCMIS appointment types and attendance as pathway contacts (docs/formats/pcmis-contacts.md); "assessment-and-treatment"
# is an assessment until the patient is assessed, a treatment session after. A service cancellation is not the patient's miss.
_PCMIS_KIND = {"assessment": "assessment", "assessment-and-treatment": "assessment", "treatment": "treatment", "review-only": "review-only"}
_PCMIS_OUTCOME = {"attended": "attended", "dna": "dna", "cancelled-by-patient": "cancelled"}


def _joined(encounter: dict[str, Any], episode: dict[str, Any], contact: dict[str, Any] | None) -> dict[str, Any]:
    """An EPR's own contact Encounter on the episode (Encounter.episodeOfCare), with the pathway contact's codings
    when the contact was recorded on it; elements kept in FHIR order."""
    out: dict[str, Any] = {}
    for key, value in encounter.items():
        out[key] = [*value, *_contact_types(contact)] if key == "type" and contact else value
        if key == "subject":
            out["episodeOfCare"] = [{"reference": f"EpisodeOfCare/{episode['id']}"}]
    return out


_PATHWAY_NAME: dict[type[Any], str] = {TalkingTherapiesRules: "Talking Therapies", PrimaryCareRules: "primary care"}
# a SystmOne contact's kind by who held it; at the hub (PCMHH) it depends on whether the patient has been assessed
_SYSTMONE_KIND = {"MHP": "mhp-session", "MHWBTC": "patient-contact"}


def _with_joined(resources: list[dict[str, Any]], episode: dict[str, Any], contact: dict[str, Any] | None) -> list[dict[str, Any]]:
    """An EPR row's resources with its contact Encounter joined to the episode (`_joined`)."""
    return [_joined(r, episode, contact) if r["resourceType"] == "Encounter" else r for r in resources]


def _not_recorded(pathway: str, why: str) -> Problem:
    return Problem(Kind.BUSINESS_RULE, "contact_id", f"stored, but not recorded on a {pathway} episode: {why}", severity="warning")


def _contact_of(encounter: dict[str, Any]) -> tuple[str, str, str, datetime]:
    codes_ = {t["coding"][0]["system"]: t["coding"][0]["code"] for t in encounter.get("type", [])}
    return (
        codes_.get(CONTACT_SYSTEM, ""),
        codes_.get(OUTCOME_SYSTEM, ""),
        codes_.get(STEP_SYSTEM, ""),
        parse_source_datetime(encounter["period"]["start"]),
    )


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


def _flag(episode: dict[str, Any], text: str, now: datetime) -> dict[str, Any]:
    return {
        "resourceType": "Flag",
        "id": resource_id("Flag", f"EpisodeOfCare/{episode['id']}", text),
        "status": "active",
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/flag-category", "code": "admin", "display": "Administrative"}]}
        ],
        "code": {"text": text},
        "subject": episode["patient"],
        "period": {"start": to_fhir_instant(now)},
    }
