"""Calendar-day clocks (TT-08, TT-09; issue 33): a target stated in days ends at the end of its last day, Europe/London."""

from __future__ import annotations

from datetime import datetime

from fhir_mapping.episodes import episode_clocks
from gateway.pathways.demo import contact
from tests.test_pathway_api import _tasks, operate, tt_episode

RECEIVED = "2026-10-10T09:00:00+01:00"  # BST; the clocks go back on 25 October, so day 28 (7 November) is GMT


def test_an_assessment_late_on_the_28th_day_across_the_bst_change_meets_the_target_TT_08(client, app) -> None:  # type: ignore[no-untyped-def]
    """TT-08 "within 28 days": a referral at 09:00 BST on 10 October is met by an assessment at 23:30 GMT on 7 November."""
    episode = tt_episode(client, received=RECEIVED)
    clock = episode_clocks(client.get(f"/fhir/EpisodeOfCare/{episode}").json())["tt-initial-assessment"]
    assert clock["due"] == "2026-11-08T00:00:00Z"  # the end of 7 November, London
    app.state.pathways.tick(datetime.fromisoformat("2026-11-07T09:00:00+00:00"))  # 28 days to the minute: not yet breached
    assert not _tasks(client, "clock-tt-initial-assessment")
    assert operate(client, episode, "record-contact", contact("assessment", date_="2026-11-07T23:30:00+00:00")).status_code == 200
    app.state.pathways.tick(datetime.fromisoformat("2026-11-09T12:00:00+00:00"))
    assert not _tasks(client, "clock-tt-initial-assessment")


def test_no_assessment_by_the_end_of_the_28th_day_breaches_at_the_start_of_the_29th_TT_08(client, app) -> None:  # type: ignore[no-untyped-def]
    """TT-08: the breach Task appears at 00:00 London on the 29th day, not at the referral's time of day on the 28th."""
    tt_episode(client, received=RECEIVED)
    app.state.pathways.tick(datetime.fromisoformat("2026-11-07T23:59:59+00:00"))
    assert not _tasks(client, "clock-tt-initial-assessment")
    app.state.pathways.tick(datetime.fromisoformat("2026-11-08T00:00:00+00:00"))
    assert len(_tasks(client, "clock-tt-initial-assessment")) == 1


def test_the_second_session_target_also_ends_at_the_end_of_its_28th_day_TT_09(client) -> None:  # type: ignore[no-untyped-def]
    """TT-09: 28 days from a first appointment at 10:00 BST on 20 October: due at the end of 17 November, London."""
    episode = tt_episode(client, received=RECEIVED)
    assert operate(client, episode, "record-contact", contact("assessment", date_="2026-10-20T10:00:00+01:00")).status_code == 200
    clock = episode_clocks(client.get(f"/fhir/EpisodeOfCare/{episode}").json())["tt-second-session"]
    assert clock["due"] == "2026-11-18T00:00:00Z"
