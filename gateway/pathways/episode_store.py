"""The pathway service's episode store: the facts an episode operation reads (contacts, measures, DIALOG+), and storing
its result (Encounter, EpisodeOfCare, letters through the outbox, Tasks, transfer, Flag, Provenance) in one transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.orm import Session, sessionmaker

from common.datetimes import parse_source_datetime, to_fhir_instant
from fhir_mapping.episodes import episode_clocks, pathway_task, transfer_request, with_clocks
from fhir_mapping.ids import resource_id
from fhir_mapping.measures import MeasureCatalogue
from gateway.cas.cases import provenance
from gateway.letters.outbox.letters import queue_letter
from gateway.pathways.records import (
    PATHWAY_ACTIVITY,
    Rules,
    _contact_of,
    _contact_types,
    _dialog_plus_in_force,
    _dialog_plus_times,
    _letter,
    _pending_of,
    _score_codes,
)
from gateway.pathways.rules.clocks import Pc08Facts, pc08_stop_time, running, stop_clock
from gateway.pathways.rules.schema import PathwayRegistry, PrimaryCareRules
from gateway.pathways.rules.steps import MISSABLE_IN_TREATMENT, EpisodeFacts, StepResult, current_step
from gateway.platform.clock import Clock
from gateway.platform.store.repo import ResourceQuery, get_resource, put_resource, search_resources

__all__ = ["PathwayStore"]

log = structlog.get_logger("iap.pathways")


class PathwayStore:
    """Reads an episode operation needs and the one transaction that stores its result (Pathways builds on it)."""

    def __init__(self, sessions: sessionmaker[Session], registry: PathwayRegistry, catalogue: MeasureCatalogue, clock: Clock) -> None:
        self.sessions = sessions
        self.registry = registry
        self.catalogue = catalogue
        self.clock = clock
        self._codes = _score_codes(catalogue)

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
            queue_letter(session, _letter(letter, stored, request, patient, now, signed_by=who or None), now, rules.service.id)
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
