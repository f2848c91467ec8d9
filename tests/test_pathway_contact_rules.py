"""Talking Therapies contact rules over HTTP, on SQLite and PostgreSQL: KIT appointments under the DNA rules (TT-19),
failed contact attempts to book the initial assessment (TT-17), letters when the wait exceeds the target (TT-18)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from gateway.pathways.demo import contact, gad7, phq9, referral
from tests.conftest import NOW
from tests.test_pathway_api import _all, _explained, _tasks, episode_of, operate, route, tt_episode


def _letters(client, kind: str) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    return [c for c in _all(client, "CommunicationRequest") if c["category"][0]["coding"][0]["code"] == kind]


# --- TT-19: KIT appointments -------------------------------------------------------------------------------------


def test_a_missed_kit_appointment_counts_as_the_first_miss_in_treatment_TT_19_TT_13(client) -> None:
    """TT-19: a KIT DNA is a missed appointment (TT-13): the first does not discharge, the next miss does."""
    episode = tt_episode(client)
    operate(client, episode, "record-contact", contact("assessment", date_="2026-11-05T10:00:00+00:00"))
    kit = operate(client, episode, "record-contact", contact("review-only", "dna", "2026-11-12T10:00:00+00:00"))
    assert kit.status_code == 200 and kit.json()["status"] == "active"
    explained = _explained(client, episode)
    assert "TT-19: KIT appointment (review only) dna" in explained
    assert "missed appointment 1 of 2 before discharge (rule file dna_discharge_in_treatment: 2)" in explained
    assert not _letters(client, "tt-discharge")
    second = operate(client, episode, "record-contact", contact("treatment", "cancelled", "2026-11-19T10:00:00+00:00")).json()
    assert second["status"] == "finished"
    (letter,) = _letters(client, "tt-discharge")
    assert "TT-13" in [c["code"] for c in letter["reasonCode"][0]["coding"]]


def test_a_cancelled_kit_appointment_as_the_second_miss_discharges_TT_19_TT_13(client) -> None:
    episode = tt_episode(client)
    operate(client, episode, "record-contact", contact("assessment", date_="2026-11-05T10:00:00+00:00"))
    first = operate(client, episode, "record-contact", contact("treatment", "dna", "2026-11-12T10:00:00+00:00")).json()
    assert first["status"] == "active"
    kit = operate(client, episode, "record-contact", contact("review-only", "cancelled", "2026-11-19T10:00:00+00:00")).json()
    assert kit["status"] == "finished"
    (letter,) = _letters(client, "tt-discharge")
    assert {"TT-13", "TT-19"} <= {c["code"] for c in letter["reasonCode"][0]["coding"]}
    assert (
        "TT-13: 2 DNAs or cancellations in treatment: discharged (reviewable); patient and referrer notified (KIT appointments count, TT-19"
        in _explained(client, episode)
    )


def test_a_kit_dna_starts_the_seven_working_day_contact_clock_TT_19_TT_13(client, app) -> None:
    from datetime import datetime

    episode = tt_episode(client)
    operate(client, episode, "record-contact", contact("assessment", date_="2026-11-05T10:00:00+00:00"))
    operate(client, episode, "record-contact", contact("review-only", "dna", "2026-11-12T10:00:00+00:00"))
    app.state.pathways.tick(datetime.fromisoformat("2026-11-20T10:00:00+00:00"))  # 6 working days after
    assert not _tasks(client, "clock-tt-dna-contact")
    app.state.pathways.tick(datetime.fromisoformat("2026-11-24T12:00:00+00:00"))  # past the 7th working day
    assert len(_tasks(client, "clock-tt-dna-contact")) == 1


def test_attended_kit_appointments_never_count_towards_the_session_limit_TT_19_TT_12(client) -> None:
    """TT-19 with TT-12: step 2 gives 7 contacts without a supervisor; two KITs among them leave the 7th treatment free."""
    episode = tt_episode(client)
    days = iter(range(3, 23))
    for _ in range(6):
        assert (
            operate(client, episode, "record-contact", contact("treatment", date_=f"2026-11-{next(days):02d}T10:00:00+00:00")).status_code
            == 200
        )
    for _ in range(2):
        kit = operate(client, episode, "record-contact", contact("review-only", date_=f"2026-11-{next(days):02d}T10:00:00+00:00"))
        assert kit.status_code == 200
    seventh = operate(client, episode, "record-contact", contact("treatment", date_=f"2026-11-{next(days):02d}T10:00:00+00:00"))
    assert seventh.status_code == 200, seventh.text
    eighth = operate(client, episode, "record-contact", contact("treatment", date_=f"2026-11-{next(days):02d}T10:00:00+00:00"))
    assert eighth.status_code == 422 and "supervisor" in eighth.json()["issue"][0]["diagnostics"]


# --- TT-17: failed contact attempts to book the initial assessment ---------------------------------------------------


def _attempt(client, episode: str, when: str):  # type: ignore[no-untyped-def]
    body = {
        "resourceType": "Parameters",
        "parameter": [{"name": "date", "valueDateTime": when}, {"name": "practitioner", "valueString": "Booking clerk A"}],
    }
    return operate(client, episode, "record-booking-attempt", body)


def test_the_attempt_before_the_limit_leaves_the_case_open_and_the_attempt_at_it_closes_it_TT_17(client) -> None:
    """TT-17: North Essex closes after 3 failed attempts (rule file assessment_booking_attempts: 3, a local decision)."""
    episode = tt_episode(client)
    for n, day in enumerate(("05", "09"), start=1):
        reply = _attempt(client, episode, f"2026-11-{day}T10:00:00+00:00")
        assert reply.status_code == 200 and reply.json()["status"] == "waitlist", reply.text
        assert f"TT-17: failed contact attempt {n} of 3 to arrange the initial assessment" in _explained(client, episode)
    assert not _letters(client, "tt-discharge")
    closed = _attempt(client, episode, "2026-11-12T10:00:00+00:00").json()
    assert closed["status"] == "finished" and closed["period"]["end"] == "2026-11-12T10:00:00Z"
    explained = _explained(client, episode)
    assert "TT-17: failed contact attempt 3 of 3: not possible to arrange an initial assessment after 3 contact attempts" in explained
    assert "rule file assessment_booking_attempts: 3" in explained
    (letter,) = _letters(client, "tt-discharge")  # to the referrer, in the same transaction as the closing
    assert "TT-17" in [c["code"] for c in letter["reasonCode"][0]["coding"]]
    assert letter["about"][0]["reference"] == f"EpisodeOfCare/{episode}"
    clock = client.get(f"/fhir/EpisodeOfCare/{episode}").json()
    assert all(any(e["url"] == "stopped" for e in ext["extension"]) for ext in clock["extension"] if ext["url"].endswith("/pathway-clock"))
    after = _attempt(client, episode, "2026-11-13T10:00:00+00:00")
    assert after.status_code == 422  # a closed episode takes no more attempts


def test_a_resent_booking_attempt_is_not_counted_twice_TT_17(client) -> None:
    episode = tt_episode(client)
    for _ in range(3):
        assert _attempt(client, episode, "2026-11-05T10:00:00+00:00").json()["status"] == "waitlist"
    assert _attempt(client, episode, "2026-11-06T10:00:00+00:00").json()["status"] == "waitlist"  # the 2nd attempt


def test_booking_attempts_after_the_assessment_are_refused_TT_17(client) -> None:
    episode = tt_episode(client)
    operate(client, episode, "record-contact", contact("assessment", date_="2026-11-05T10:00:00+00:00"))
    refused = _attempt(client, episode, "2026-11-06T10:00:00+00:00")
    assert refused.status_code == 422 and "TT-17" in refused.json()["issue"][0]["diagnostics"]


# --- TT-18: waits over the target ------------------------------------------------------------------------------------


def _wait_letters(client) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    return _letters(client, "tt-wait-estimate")


def _other_patient(client, received: str) -> str:  # type: ignore[no-untyped-def]
    body = referral(
        "north-essex-mid", "R-NEW", received, "1985-05-05", nhs_number="9990000166", practice="F81001", responses=(phq9(12), gad7(6))
    )
    reply = route(client, body)
    assert reply.status_code == 201, reply.text
    return episode_of(reply.json())


def _agree_email(app, episode: str) -> None:  # type: ignore[no-untyped-def]
    """TT-15: the patient's contact preferences permit email (as a PCMIS row or a self-referral records them)."""
    from fhir_mapping.pcmis import contact_preferences
    from gateway.platform.store.repo import get_resource, put_resource

    with app.state.sessions.begin() as session:
        stored = get_resource(session, "EpisodeOfCare", episode)
        assert stored is not None
        patient = stored["patient"]
        put_resource(session, contact_preferences(patient, {"email": True}, None, False, NOW, "PCMIS"), NOW, None)


def test_no_letter_while_the_estimated_wait_is_within_the_target_TT_18(client, app) -> None:
    tt_episode(client, received="2026-10-27T10:00:00+00:00")  # 27 days waiting: estimate 28 days (4 weeks), the target
    app.state.pathways.tick(NOW)
    assert _wait_letters(client) == []


def test_waits_over_target_write_to_each_person_and_gp_once_per_estimate_TT_18_TT_15(client, app) -> None:
    """TT-18: the estimate (longest current wait, nobody having entered treatment, rounded up to weeks) is over the
    28-day target: everyone waiting for a first appointment gets one letter, GP and patient; by email where consented."""
    long = tt_episode(client, received="2026-10-01T10:00:00+01:00", ref="R-LONG")  # 53 days at NOW: estimate 56 days
    recent = _other_patient(client, "2026-11-20T10:00:00+00:00")
    _agree_email(app, recent)
    app.state.pathways.tick(NOW)
    app.state.pathways.tick(NOW + timedelta(days=1))  # the next day: the same estimate, no second letter
    letters = _wait_letters(client)
    assert len(letters) == 2
    by_episode = {c["about"][0]["reference"]: c for c in letters}
    assert set(by_episode) == {f"EpisodeOfCare/{long}", f"EpisodeOfCare/{recent}"}
    for letter in letters:
        text = " ".join(p["contentString"] for p in letter["payload"])
        assert "within about 8 weeks" in text and "Samaritans" in text and "Every Mind Matters" in text
        assert {r.get("reference", "").split("/")[0] for r in letter["recipient"]} >= {"Patient"}
        assert len(letter["recipient"]) == 2  # the GP practice and the patient
    assert by_episode[f"EpisodeOfCare/{recent}"]["medium"][0]["coding"][0]["code"] == "EMAILWRIT"
    assert by_episode[f"EpisodeOfCare/{long}"]["medium"][0]["coding"][0]["code"] == "MAILWRIT"
    explained = _explained(client, long)
    assert "TT-18: estimated wait to a first appointment 56 days (longest current wait" in explained
    assert "wait_letters.round_to_days: 7" in explained and "post (no email consent recorded)" in explained
    assert "email (TT-15: email consent recorded)" in _explained(client, recent)

    app.state.pathways.tick(NOW + timedelta(days=4))  # 57 days: the estimate moves to 63 days: one more letter each
    assert len(_wait_letters(client)) == 4
    app.state.pathways.tick(NOW + timedelta(days=5))
    assert len(_wait_letters(client)) == 4


def test_someone_seen_gets_no_more_wait_letters_TT_18(client, app) -> None:
    first = tt_episode(client, received="2026-10-01T10:00:00+01:00", ref="R-LONG")
    app.state.pathways.tick(NOW)
    operate(client, first, "record-contact", contact("assessment", date_="2026-11-23T10:00:00+00:00"))
    _other_patient(client, "2026-11-20T10:00:00+00:00")
    app.state.pathways.tick(NOW + timedelta(days=4))
    # the estimate is now the median wait of those who entered treatment (53 days -> 56): the new referral is written to
    assert [c["about"][0]["reference"] for c in _wait_letters(client)].count(f"EpisodeOfCare/{first}") == 1
    assert len(_wait_letters(client)) == 2
