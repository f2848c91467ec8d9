"""Contacts recorded in an EPR (PCMIS, SystmOne) joined to the patient's open pathway episode, in the row's transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.orm import Session

from adapters.pcmis import PcmisContact
from adapters.problems import GatewayInputError, Kind, Problem
from adapters.systmone import SystmOneContact
from common.datetimes import parse_source_datetime, to_fhir_instant
from gateway.cas.rules.ops import Params
from gateway.pathways.episode_store import PathwayStore
from gateway.pathways.records import Rules, _contact_types
from gateway.pathways.rules.schema import PrimaryCareRules, TalkingTherapiesRules
from gateway.pathways.rules.steps import OPEN_EPISODE, EpisodeFacts, apply_episode_operation
from gateway.platform.security.principal import allowed_service
from gateway.platform.store.repo import ResourceQuery, get_for_update, search_resources

__all__ = ["EprContacts"]

log = structlog.get_logger("iap.pathways")


class EprContacts(PathwayStore):
    """EPR contacts (PCMIS, SystmOne) recorded on the patient's one open pathway episode (Pathways builds on it)."""

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
