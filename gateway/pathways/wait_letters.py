"""TT-18: letters when the wait to a first appointment exceeds the target (North Essex policy 4.1.5).

"In the event that waits to first appointment are unavoidable and exceed the targets ..., the service will alert
service users and their GPs of the estimated timeframe for first appointment. This communication will be in writing
(email if consent for email communication has been provided) and will include information on emergency helplines and
alternative sources of support."

Run from the clock ticker (`Pathways.tick`). Per Talking Therapies service, the estimate comes from the wait list: the
median referral-to-first-appointment wait of those who entered treatment within the rule file's
`wait_letters.estimate_from` (TT-08 figures), or, with nobody entered, the longest current wait for a first
appointment; rounded up to `wait_letters.round_to_days`. When it exceeds the `tt-initial-assessment` target, everyone
waiting for a first appointment gets one letter (GP and patient, through the outbox) per estimate: the letter's id is
fixed by the episode and the estimate, so a later tick with the same estimate writes nothing, and a changed estimate
writes once more. The patient's copy goes by email where the contact-preferences Consent permits email (TT-15), else
by post (`CommunicationRequest.medium`).
"""

from __future__ import annotations

import math
import statistics
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.orm import Session, sessionmaker

from common import codes
from common.datetimes import london_date, parse_source_datetime
from fhir_mapping.episodes import episode_clocks, letter_request
from fhir_mapping.fhir import CommunicationRequest, build, to_json_dict
from fhir_mapping.ids import resource_id
from gateway.cas.cases import provenance
from gateway.letters.outbox.consent import email_permitted
from gateway.letters.outbox.letters import queue_letter
from gateway.pathways.rules.clocks import referral_to_treatment
from gateway.pathways.rules.schema import PathwayRegistry, TalkingTherapiesRules
from gateway.pathways.rules.steps import OPEN_EPISODE
from gateway.platform.store.repo import ResourceQuery, get_for_update, get_resource, put_resource, search_resources

__all__ = ["LETTER_TYPE", "estimated_wait_days", "send_wait_letters"]

log = structlog.get_logger("iap.wait_letters")
LETTER_TYPE = "tt-wait-estimate"
_MODE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationMode"
_EMAIL = {"coding": [{"system": _MODE, "code": "EMAILWRIT", "display": "email"}]}
_ACTIVITY = f"{codes.GATEWAY_BASE}/CodeSystem/pathway-operation"  # as gateway.pathways.service.PATHWAY_ACTIVITY
_POST = {"coding": [{"system": _MODE, "code": "MAILWRIT", "display": "mail"}]}


def estimated_wait_days(episodes: list[dict[str, Any]], rules: TalkingTherapiesRules, now: datetime) -> tuple[int, str] | None:
    """TT-18: the estimated wait (days, rounded up to the rule file's step) to a first appointment, and how it was made."""
    since = london_date(now - rules.wait_letters.estimate_from)
    entered = []
    for episode in episodes:
        found = referral_to_treatment(episode_clocks(episode))
        if found is not None and found[1] <= now and london_date(found[1]) >= since:
            entered.append((london_date(found[1]) - london_date(found[0])).days)
    if entered:
        days, how = statistics.median(entered), f"median wait of the {len(entered)} who entered treatment since {since.isoformat()}"
    else:
        waiting = [_waited(e, now) for e in episodes if e["status"] in OPEN_EPISODE and _waiting_for_first(e)]
        if not waiting:
            return None
        days, how = max(waiting), f"longest current wait of the {len(waiting)} waiting (nobody entered treatment since {since.isoformat()})"
    step = rules.wait_letters.round_to_days
    return math.ceil(days / step) * step, how


def _waiting_for_first(episode: dict[str, Any]) -> bool:
    clock = episode_clocks(episode).get("tt-initial-assessment")
    return clock is not None and not clock.get("stopped")


def _waited(episode: dict[str, Any], now: datetime) -> int:
    return (london_date(now) - london_date(parse_source_datetime(episode_clocks(episode)["tt-initial-assessment"]["start"]))).days


def send_wait_letters(sessions: sessionmaker[Session], registry: PathwayRegistry, now: datetime) -> list[str]:
    """TT-18 for every Talking Therapies service; the ids of the letters queued (each with its Provenance)."""
    queued: list[str] = []
    for rules in registry.services.values():
        if not isinstance(rules, TalkingTherapiesRules):
            continue
        with sessions() as session:
            episodes, _ = search_resources(session, ResourceQuery("EpisodeOfCare", service=rules.service.id, count=1_000_000))
        found = estimated_wait_days(episodes, rules, now)
        clock = rules.clocks["tt-initial-assessment"]
        target = clock.after.days if clock.after else 0
        if found is None or found[0] <= target:
            continue
        days, how = found
        for episode in episodes:
            if episode["status"] in OPEN_EPISODE and _waiting_for_first(episode):
                letter = _letter_once(sessions, episode["id"], rules, days, how, target, now)
                if letter:
                    queued.append(letter)
    if queued:
        log.info("pathway.wait_letters", letters=len(queued))
    return queued


def _letter_once(
    sessions: sessionmaker[Session], episode_id: str, rules: TalkingTherapiesRules, days: int, how: str, target: int, now: datetime
) -> str | None:
    """One episode's letter for this estimate, unless it was written before (its id is fixed by episode and estimate)."""
    key = f"EpisodeOfCare/{episode_id}#wait-estimate-{days}"
    with sessions.begin() as session:
        locked = get_for_update(session, "EpisodeOfCare", episode_id)
        if locked is None or locked[0]["status"] not in OPEN_EPISODE or not _waiting_for_first(locked[0]):
            return None
        if get_resource(session, "CommunicationRequest", resource_id("CommunicationRequest", key, LETTER_TYPE)) is not None:
            return None
        episode = locked[0]
        patient_id = episode["patient"]["reference"].split("/", 1)[1]
        patient = get_resource(session, "Patient", patient_id) or {}
        request = get_resource(session, "ServiceRequest", episode["referralRequest"][0]["reference"].split("/", 1)[1]) or {}
        recipients = [*patient.get("generalPractitioner", [])[:1], {"reference": f"Patient/{patient_id}"}]
        weeks = days // 7 if days % 7 == 0 else None
        estimate = f"about {weeks} weeks" if weeks else f"about {days} days"
        support = rules.wait_letters
        referred = london_date(parse_source_datetime(episode["period"]["start"])).strftime("%d %B %Y").lstrip("0")
        lines = [
            f"We are sorry that the wait for a first appointment is longer than our target of {target} days. We expect to "
            f"offer a first appointment within {estimate} of the referral (received {referred}).",
            "If you need help urgently: " + "; ".join(support.helplines),
            "Support you can use while you wait: " + "; ".join(support.alternative_support),
        ]
        email = email_permitted(session, patient_id)  # TT-15 (checked again when it is sent)
        built = letter_request(
            LETTER_TYPE,
            "Talking Therapies: expected wait for a first appointment",
            f"Patient/{patient_id}",
            recipients,
            [f"EpisodeOfCare/{episode_id}", f"ServiceRequest/{request['id']}"] if request else [f"EpisodeOfCare/{episode_id}"],
            now,
            ["TT-18", "TT-15"] if email else ["TT-18"],
            lines,
            key=key,
        )
        medium = {k: v for k, v in built.items() if k != "resourceType"} | {"medium": [_EMAIL if email else _POST]}
        stored = queue_letter(session, to_json_dict(build(CommunicationRequest, **medium)), now, rules.service.id)
        summary = (
            f"TT-18: estimated wait to a first appointment {days} days ({how}; rounded up to "
            f"wait_letters.round_to_days: {rules.wait_letters.round_to_days}) is over the target of {target} days "
            f"(clock tt-initial-assessment): letter to the GP and the patient, the patient's by "
            f"{'email (TT-15: email consent recorded)' if email else 'post (no email consent recorded)'}"
        )
        record = provenance(episode, "wait-letter", "IAP gateway", ["TT-18"], summary, now, system=_ACTIVITY, policy=rules.policy_uri)
        record["id"] = resource_id("Provenance", key, "wait-letter")
        record["target"].append({"reference": f"CommunicationRequest/{stored['id']}"})
        put_resource(session, record, now, rules.service.id)
        return str(stored["id"])
    return None
