"""Pathways over HTTP, on SQLite and PostgreSQL: routing, episodes, step operations, clocks, $explain, the wait-list report."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from common.datetimes import to_fhir_instant
from gateway.pathways.demo import contact, gad7, phq9, referral
from tests.conftest import NOW, ROOT
from tests.test_pcmis import rows, to_csv

PATHWAYS = ROOT / "fixtures" / "pathways"
SYSTMONE = ROOT / "fixtures" / "systmone" / "contacts.csv"
PCMIS = ROOT / "fixtures" / "pcmis" / "contacts.csv"


def route(client, body: dict[str, Any]):  # type: ignore[no-untyped-def]
    return client.post("/fhir/ServiceRequest/$route", json=body)


def param(reply: dict[str, Any], name: str) -> Any:
    found = [next(v for k, v in p.items() if k.startswith("value")) for p in reply["parameter"] if p["name"] == name]
    return found[0] if found else None


def episode_of(reply: dict[str, Any]) -> str:
    return str(param(reply, "episode")["reference"].split("/", 1)[1])


def operate(client, episode: str, name: str, body: dict[str, Any]):  # type: ignore[no-untyped-def]
    return client.post(f"/fhir/EpisodeOfCare/{episode}/${name}", json=body)


def search(client, rtype: str, **params: str) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    bundle = client.get(f"/fhir/{rtype}", params=params).json()
    return [e["resource"] for e in bundle.get("entry", [])]


def tt_episode(client, received: str = "2026-11-02T10:00:00+00:00", phq: int = 12, ref: str = "R-TT") -> str:  # type: ignore[no-untyped-def]
    reply = route(client, referral("north-essex-mid", ref, received, "1990-01-01", practice="F81001", responses=(phq9(phq), gad7(6))))
    assert reply.status_code == 201, reply.text
    return episode_of(reply.json())


def test_an_accepted_referral_opens_an_episode_with_its_clock_and_the_rule_version_TT_07_TT_08(client) -> None:
    reply = route(client, json.loads((PATHWAYS / "tt-gp-referral-step-3.servicerequest.json").read_text()))
    assert reply.status_code == 201
    body = reply.json()
    assert param(body, "outcome") == "accept" and param(body, "step") == "step-3"
    assert param(body, "rules-version") == "north-essex-north-east pathway 2026.12.3"
    episode = client.get(reply.headers["location"]).json()
    assert episode["status"] == "waitlist" and episode["type"][1]["coding"][0]["code"] == "step-3"
    clock = next(e for e in episode["extension"] if e["url"].endswith("/pathway-clock"))
    values = {x["url"]: next(v for k, v in x.items() if k.startswith("value")) for x in clock["extension"]}
    assert values["name"] == "tt-initial-assessment" and values["due"] == "2026-12-19T00:00:00Z"  # end of the 28th day
    explained = client.get(f"/fhir/EpisodeOfCare/{episode['id']}/$explain").json()
    text = " ".join(p["valueString"] for p in explained["parameter"] if p["name"] == "step")
    assert "TT-07" in text and "PHQ-9 16" in text and "rules/north-essex-north-east/2026.12.3" in text


def test_a_resent_referral_gets_its_original_reply_and_stores_nothing(client, stored) -> None:
    body = json.loads((PATHWAYS / "tt-self-referral-urgent.servicerequest.json").read_text())
    first = route(client, body)
    before = stored()
    again = route(client, body)
    assert again.json() == first.json() and again.headers["x-duplicate-of"]
    assert stored() == before


def test_urgent_self_referral_makes_a_duty_screening_task_and_records_the_gp_wish_TT_02_TT_03(client) -> None:
    reply = route(client, json.loads((PATHWAYS / "tt-self-referral-urgent.servicerequest.json").read_text())).json()
    task = client.get(f"/fhir/{param(reply, 'task')['reference']}").json()
    assert task["code"]["coding"][0]["code"] == "duty-screening" and task["priority"] == "urgent"
    assert task["restriction"]["period"]["end"] == "2026-11-20T14:00:00Z"  # PT4H (local decision)
    patient = param(reply, "referral")["reference"]
    request = client.get(f"/fhir/{patient}").json()
    consent = search(client, "Patient", identifier="https://fhir.nhs.uk/Id/nhs-number|9990000174")[0]
    stored_consent = [c for c in _all(client, "Consent") if c["patient"]["reference"] == f"Patient/{consent['id']}"][0]
    assert {"type": "deny", "action": [{"text": "contact the GP practice"}]} in stored_consent["provision"]["provision"]
    assert request["extension"][0]["valueBoolean"] is False


def _all(client, rtype: str) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from gateway.platform.store.models import ResourceRow

    with client.app.state.sessions() as session:
        rows_ = session.execute(select(ResourceRow).where(ResourceRow.resource_type == rtype)).scalars()
        return [json.loads(r.content) for r in rows_]


def test_a_crisis_referral_is_never_booked_it_gets_the_crisis_route_PC_02_PC_13(client, stored) -> None:
    reply = route(client, json.loads((PATHWAYS / "pc-crisis-response.servicerequest.json").read_text()))
    body = reply.json()
    assert reply.status_code == 201 and param(body, "outcome") == "redirect" and param(body, "route") == "crisis"
    assert stored().get("EpisodeOfCare", 0) == 0  # nothing booked
    transfer = client.get(f"/fhir/{param(body, 'transfer')['reference']}").json()
    assert transfer["performer"][0]["display"].startswith("Crisis team") and transfer["status"] == "active"
    task = client.get(f"/fhir/{param(body, 'task')['reference']}").json()
    assert task["priority"] == "urgent" and task["code"]["coding"][0]["code"] == "transfer-of-care"
    letter = client.get(f"/fhir/{param(body, 'letter')['reference']}").json()
    assert letter["category"][0]["coding"][0]["code"] == "signposting"


def test_refusals_name_the_element_and_store_nothing(client, stored) -> None:
    before = stored()
    body = referral("north-essex-mid", "R-BAD", "2026-11-20T10:00:00+00:00", "1990-01-01", source="self")
    reply = route(client, body)
    assert reply.status_code == 400 and "gp-contact-agreed" in reply.json()["issue"][0]["expression"][0]
    unknown = route(client, referral("nowhere", "R-BAD2", "2026-11-20T10:00:00+00:00", "1990-01-01"))
    assert unknown.status_code == 422 and unknown.json()["issue"][0]["expression"] == ["ServiceRequest.performer.identifier"]
    step_up = route(
        client,
        referral("rdash-rotherham", "R-BAD3", "2026-11-20T10:00:00+00:00", "1990-01-01", source="mhp", step="pcmhh", practice="C87001"),
    )
    assert step_up.status_code == 422 and "PC-06" in step_up.json()["issue"][0]["diagnostics"]
    assert stored() == before


@pytest.mark.parametrize(
    ("mutate", "element", "words"),
    [
        (lambda qr: qr.update(status="bogus"), "ServiceRequest.contained.where(id='phq9').status", "is not one of"),
        (lambda qr: qr.pop("status"), "ServiceRequest.contained.where(id='phq9').status", "'status' is required"),
    ],
    ids=["status-not-in-its-value-set", "status-missing"],
)
def test_a_contained_response_that_is_not_valid_fhir_is_refused_by_its_element_and_nothing_is_stored(
    client, stored, mutate, element: str, words: str
) -> None:
    before = stored()
    body = referral("north-essex-mid", "R-BAD-QR", "2026-11-20T10:00:00+00:00", "1990-01-01", responses=(phq9(12), gad7(6)))
    mutate(next(r for r in body["contained"] if r.get("id") == "phq9"))
    reply = route(client, body)
    assert reply.status_code == 400, reply.text
    assert any(i["expression"] == [element] and words in i["diagnostics"] for i in reply.json()["issue"]), reply.text
    assert stored() == before


def test_a_fifth_mhp_session_needs_a_step_up_review_PC_05(client) -> None:
    reply = route(client, referral("rdash-rotherham", "R-MHP", "2026-11-02T10:00:00+00:00", "1980-01-01", step="mhp", practice="C87001"))
    episode = episode_of(reply.json())
    for day in range(3, 7):
        assert (
            operate(client, episode, "record-contact", contact("mhp-session", date_=f"2026-11-{day:02d}T10:00:00+00:00")).status_code == 200
        )
    fifth = operate(client, episode, "record-contact", contact("mhp-session", date_="2026-11-09T10:00:00+00:00"))
    assert fifth.status_code == 422 and "PC-05" in fifth.json()["issue"][0]["diagnostics"]
    reviewed = operate(client, episode, "record-contact", contact("mhp-session", date_="2026-11-09T10:00:00+00:00", step_up_review=True))
    assert reviewed.status_code == 200


def test_session_caps_need_a_supervisor_past_the_standard_and_stop_at_the_maximum_TT_12(client) -> None:
    episode = tt_episode(client)
    days = iter(range(3, 30))
    for _ in range(7):
        assert (
            operate(client, episode, "record-contact", contact("treatment", date_=f"2026-11-{next(days):02d}T10:00:00+00:00")).status_code
            == 200
        )
    eighth = operate(client, episode, "record-contact", contact("treatment", date_="2026-11-20T10:00:00+00:00"))
    assert eighth.status_code == 422 and "supervisor" in eighth.json()["issue"][0]["diagnostics"]
    for day in (20, 21, 22):
        ok = operate(
            client, episode, "record-contact", contact("treatment", date_=f"2026-11-{day}T10:00:00+00:00", supervisor_agreement="Dr S")
        )
        assert ok.status_code == 200
    eleventh = operate(
        client, episode, "record-contact", contact("treatment", date_="2026-11-23T09:00:00+00:00", supervisor_agreement="Dr S")
    )
    assert eleventh.status_code == 422 and "at most 10" in eleventh.json()["issue"][0]["diagnostics"]
    kit = operate(client, episode, "record-contact", contact("review-only", date_="2026-11-23T09:30:00+00:00"))
    assert kit.status_code == 200  # TT-10: a KIT call is review only, not a session


def test_not_attending_the_assessment_discharges_TT_13(client) -> None:
    episode = tt_episode(client)
    reply = operate(client, episode, "record-contact", contact("assessment", "dna", "2026-11-10T10:00:00+00:00"))
    assert reply.json()["status"] == "finished"
    letters = [c for c in _all(client, "CommunicationRequest") if c["category"][0]["coding"][0]["code"] == "tt-discharge"]
    assert len(letters) == 1 and "TT-13" in [c["code"] for c in letters[0]["reasonCode"][0]["coding"]]


def test_first_dna_in_treatment_does_not_discharge_the_second_does_TT_13(client) -> None:
    episode = tt_episode(client)
    operate(client, episode, "record-contact", contact("assessment", date_="2026-11-05T10:00:00+00:00"))
    first = operate(client, episode, "record-contact", contact("treatment", "dna", "2026-11-12T10:00:00+00:00")).json()
    assert first["status"] == "active"
    second = operate(client, episode, "record-contact", contact("treatment", "cancelled", "2026-11-19T10:00:00+00:00")).json()
    assert second["status"] == "finished"


def test_no_contact_seven_working_days_after_a_dna_makes_one_task_TT_13(client, app, clock) -> None:
    episode = tt_episode(client)
    operate(client, episode, "record-contact", contact("assessment", date_="2026-11-05T10:00:00+00:00"))
    clock.set(datetime.fromisoformat("2026-12-23T11:00:00+00:00"))  # a contact is recorded once it has happened
    operate(client, episode, "record-contact", contact("treatment", "dna", "2026-12-23T10:00:00+00:00"))
    pathways = app.state.pathways
    assert not [t for t in _tasks(client, "clock-tt-dna-contact")]
    pathways.tick(datetime.fromisoformat("2027-01-04T09:00:00+00:00"))  # 24, 29, 30, 31 Dec, 4 Jan: only 5 working days
    assert not _tasks(client, "clock-tt-dna-contact")
    pathways.tick(datetime.fromisoformat("2027-01-06T10:00:00+00:00"))  # the 7th working day (25, 28 Dec and 1 Jan are holidays)
    pathways.tick(datetime.fromisoformat("2027-01-07T10:00:00+00:00"))  # a second tick, or another instance: no second Task
    assert len(_tasks(client, "clock-tt-dna-contact")) == 1


def _tasks(client, kind: str) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    return [t for t in _all(client, "Task") if t["code"]["coding"][0]["code"] == kind]


def test_initial_assessment_breach_makes_one_task_and_is_reported_TT_08(client, app) -> None:
    tt_episode(client, received="2026-10-01T10:00:00+01:00")
    assert len(app.state.pathways.tick(NOW)) == 1
    assert app.state.pathways.tick(NOW) == []
    report = client.get("/reports/waitlist").json()
    assert report["summary"]["first-appointment"]["over_target"] == 1 and report["summary"]["first-appointment"]["over_outer_line"] == 1
    assert report["breaches"][0]["clock"] == "tt-initial-assessment" and report["breaches"][0]["rule"] == "TT-08"


def test_the_report_gives_the_share_entering_treatment_within_6_and_18_weeks_of_referral_TT_08(client) -> None:
    entered = {  # referral -> first attended assessment (the first treatment appointment)
        "R-42": ("2026-10-01T00:30:00+01:00", "2026-11-12T10:00:00+00:00"),  # 42 London days (43 UTC days), within
        "R-43": ("2026-09-01T10:00:00+01:00", "2026-10-14T09:00:00+01:00"),  # 43 days
        "R-127": ("2026-07-01T10:00:00+01:00", "2026-11-05T10:00:00+00:00"),  # 127 days: over 18 weeks too
    }
    for ref, (received, assessed) in entered.items():
        episode = tt_episode(client, received=received, ref=ref)
        assert operate(client, episode, "record-contact", contact("assessment", date_=assessed)).status_code == 200
    discharged = tt_episode(client, received="2026-10-01T10:00:00+01:00", ref="R-DNA")  # never entered treatment
    operate(client, discharged, "record-contact", contact("assessment", "dna", "2026-10-20T10:00:00+01:00"))
    tt_episode(client, received="2026-11-02T10:00:00+00:00", ref="R-WAIT")  # still waiting

    mid = _targets(client.get("/reports/waitlist").json(), "north-essex-mid")
    assert (mid["rule"], mid["entered_treatment"], mid["median_days"], mid["longest_days"]) == ("TT-08", 3, 43, 127)
    assert [(t["within_days"], t["entered_within"], t["share"], t["target_share"], t["met"]) for t in mid["targets"]] == [
        (42, 1, 0.333, 0.75, False),
        (126, 2, 0.667, 0.95, False),
    ]
    november = _targets(client.get("/reports/waitlist", params={"from": "2026-11-01", "to": "2026-11-30"}).json(), "north-essex-mid")
    assert november["entered_treatment"] == 2 and november["entered_from"] == "2026-11-01"
    assert [(t["entered_within"], t["met"]) for t in november["targets"]] == [(1, False), (1, False)]
    west = _targets(client.get("/reports/waitlist", params={"service": "north-essex-west"}).json(), "north-essex-west")
    assert west["entered_treatment"] == 0 and [t["met"] for t in west["targets"]] == [None, None]  # nobody to judge

    for params, element in (({"from": "2026-11-31"}, "from"), ({"from": "2026-11-02", "to": "2026-11-01"}, "from"), ({"to": "x"}, "to")):
        refused = client.get("/reports/waitlist", params=params)
        assert refused.status_code == 400 and refused.json()["issue"][0]["expression"] == [element], refused.text


def _targets(report: dict[str, Any], service: str) -> dict[str, Any]:
    return next(t for t in report["treatment_targets"] if t["service"] == service)


def test_assessment_starts_the_second_session_and_kit_clocks_TT_09_TT_10(client, app) -> None:
    episode = tt_episode(client)
    operate(client, episode, "record-contact", contact("assessment", date_="2026-11-05T10:00:00+00:00"))
    app.state.pathways.tick(datetime.fromisoformat("2026-12-04T10:00:00+00:00"))
    kinds = {t["code"]["coding"][0]["code"] for t in _all(client, "Task")}
    assert {"clock-tt-second-session", "clock-tt-kit-call"} <= kinds
    report = client.get("/reports/waitlist").json()
    assert report["rows"][0]["waiting_for"] == "second-appointment"


def test_kit_opt_out_stops_the_kit_clock_with_an_alert_and_a_letter_TT_10(client) -> None:
    episode = tt_episode(client)
    operate(client, episode, "record-contact", contact("assessment", date_="2026-11-05T10:00:00+00:00"))
    reply = operate(client, episode, "kit-opt-out", {"resourceType": "Parameters", "parameter": []})
    assert reply.status_code == 200
    assert [f for f in _all(client, "Flag") if "keeping-in-touch" in f["code"]["text"]]


def _pcmis(*contacts: tuple[str, str, str], nhs: str = "9990000174") -> bytes:
    """PCMIS rows for the patient: (appointment type, attendance, time) each; the fixture's first row otherwise."""
    template = rows(PCMIS.read_text())[0]
    return to_csv(
        [
            template
            | {"contact_id": f"PW-{nhs}-{when}", "nhs_number": nhs, "appointment_type": kind, "attendance": attended, "contact_time": when}
            for kind, attended, when in contacts
        ]
    )


def _on_episode(client, episode: str) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    return [e for e in _all(client, "Encounter") if {"reference": f"EpisodeOfCare/{episode}"} in e.get("episodeOfCare", [])]


def row_encounter(client, row: dict[str, Any]) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The stored Encounter of an accepted PCMIS row (its reply lists what it stored)."""
    return dict(client.get(f"/fhir/{next(r for r in row['resources'] if r.startswith('Encounter/'))}").json())


def _ingest_pcmis(client, body: bytes) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    reply = client.post("/ingest/pcmis", content=body, headers={"Content-Type": "text/csv"})
    assert reply.status_code == 200, reply.text
    return list(reply.json()["rows"])


def test_pcmis_contacts_move_the_patients_talking_therapies_episode_TT_08_TT_09_TT_13(client) -> None:
    episode = tt_episode(client, received="2026-10-01T10:00:00+01:00")
    first = _ingest_pcmis(client, _pcmis(("assessment-and-treatment", "attended", "2026-10-20T10:00:00+01:00")))
    assert first[0]["outcome"] == "accepted" and "issues" not in first[0]
    clocks = _clocks(client, episode)
    assert clocks["tt-initial-assessment"]["stopped"] == "2026-10-20T10:00:00+01:00"  # TT-08: entered treatment
    assert clocks["tt-second-session"]["start"] == "2026-10-20T10:00:00+01:00"  # TT-09 runs from the first appointment
    encounter = row_encounter(client, first[0])
    assert encounter["episodeOfCare"] == [{"reference": f"EpisodeOfCare/{episode}"}]  # the PCMIS Encounter itself, no copy
    assert [e["id"] for e in _on_episode(client, episode)] == [encounter["id"]]
    assert [c for c in _all(client, "CommunicationRequest") if c["category"][0]["coding"][0]["code"] == "tt-assessment-outcome"]
    assert _targets(client.get("/reports/waitlist").json(), "north-essex-mid")["entered_treatment"] == 1

    later = _pcmis(
        ("treatment", "dna", "2026-10-27T10:00:00+00:00"),
        ("treatment", "cancelled-by-service", "2026-11-03T10:00:00+00:00"),  # the service's cancellation is not the patient's miss
        ("treatment", "cancelled-by-patient", "2026-11-10T10:00:00+00:00"),  # the 2nd miss in treatment: discharged (TT-13)
    )
    assert [r["outcome"] for r in _ingest_pcmis(client, later)] == ["accepted"] * 3
    stored = client.get(f"/fhir/EpisodeOfCare/{episode}").json()
    assert stored["status"] == "finished" and stored["period"]["end"] == "2026-11-10T10:00:00Z"
    assert "TT-13: 2 DNAs or cancellations in treatment: discharged" in _explained(client, episode)
    assert [r["outcome"] for r in _ingest_pcmis(client, later)] == ["duplicate"] * 3  # a re-sent export changes nothing
    assert client.get(f"/fhir/EpisodeOfCare/{episode}").json()["meta"]["versionId"] == stored["meta"]["versionId"]


def test_a_pcmis_contact_the_episode_cannot_take_is_stored_with_a_warning_and_changes_nothing_TT_12(client) -> None:
    episode = tt_episode(client, received="2026-10-01T10:00:00+01:00")  # PHQ-9 12: step 2, up to 7 contacts without agreement
    sessions = [("assessment", "attended", "2026-10-06T10:00:00+01:00")]
    sessions += [("treatment", "attended", f"2026-{10 + (d > 31)}-{(d - 1) % 31 + 1:02d}T10:00:00+00:00") for d in range(27, 55, 4)]
    sessions[1] = ("assessment-and-treatment", "attended", sessions[1][2])  # after the assessment: a treatment session
    replies = _ingest_pcmis(client, _pcmis(*sessions))
    assert [r["outcome"] for r in replies] == ["accepted"] * 8 and all("issues" not in r for r in replies[:7])
    assert _clocks(client, episode)["tt-second-session"]["stopped"] == "2026-10-27T10:00:00Z"  # TT-09: the second session
    warning = replies[7]["issues"][0]
    assert warning["severity"] == "warning" and warning["code"] == "business-rule" and warning["expression"] == ["row[8].contact_id"]
    assert f"not recorded on a Talking Therapies episode: EpisodeOfCare/{episode} refuses it: TT-12" in warning["diagnostics"]
    assert "needs the clinical supervisor's agreement" in warning["diagnostics"]
    assert row_encounter(client, replies[7])["episodeOfCare"] == [{"reference": f"EpisodeOfCare/{episode}"}]
    assert len(_on_episode(client, episode)) == 8
    assert "contact 8" not in _explained(client, episode)


def test_a_pcmis_client_bound_to_one_service_moves_only_that_services_episodes(client, client_with) -> None:
    mid = tt_episode(client, received="2026-10-01T10:00:00+01:00")
    west = client_with({"ingest:pcmis"}, service="north-essex-west")
    reply = _ingest_pcmis(west, _pcmis(("assessment", "attended", "2026-10-20T10:00:00+01:00")))[0]
    assert reply["outcome"] == "accepted" and "issues" not in reply  # another service's episode is not even named
    assert "stopped" not in _clocks(client, mid)["tt-initial-assessment"]
    own = client_with({"ingest:pcmis"}, service="north-essex-mid")
    assert "issues" not in _ingest_pcmis(own, _pcmis(("assessment", "attended", "2026-10-21T10:00:00+01:00")))[0]
    assert _clocks(client, mid)["tt-initial-assessment"]["stopped"] == "2026-10-21T10:00:00+01:00"


def test_a_contact_dated_before_the_episode_began_is_not_recorded_on_it_TT_08(client) -> None:
    episode = tt_episode(client, received="2026-10-01T10:00:00+01:00")
    early = operate(client, episode, "record-contact", contact("assessment", date_="2026-09-30T10:00:00+01:00"))
    assert early.status_code == 422 and "before the episode began (2026-10-01T10:00:00+01:00)" in early.text
    assert early.json()["issue"][0]["expression"] == ["Parameters.parameter.where(name='date')"]
    history = _ingest_pcmis(client, _pcmis(("assessment", "attended", "2026-03-02T10:00:00+00:00")))[0]  # an earlier course
    assert history["outcome"] == "accepted"
    assert f"it is dated before EpisodeOfCare/{episode} began" in history["issues"][0]["diagnostics"]
    assert "stopped" not in _clocks(client, episode)["tt-initial-assessment"] and _on_episode(client, episode) == []


def test_a_contact_dated_in_the_future_is_not_recorded_on_the_episode_TT_08(client) -> None:
    """A clock stopped by a session yet to happen would report a wait that has not ended; 5 minutes of clock skew pass."""
    episode = tt_episode(client, received="2026-11-02T10:00:00+00:00")
    ahead = operate(client, episode, "record-contact", contact("assessment", date_="2026-11-23T12:06:00+00:00"))  # now: 12:00
    assert ahead.status_code == 422 and "is in the future (now 2026-11-23T12:00:00Z)" in ahead.text
    assert ahead.json()["issue"][0]["expression"] == ["Parameters.parameter.where(name='date')"]
    booked = _ingest_pcmis(client, _pcmis(("assessment", "attended", "2026-11-30T10:00:00+00:00")))[0]  # an export's booking
    assert booked["outcome"] == "accepted" and "is in the future" in booked["issues"][0]["diagnostics"]
    assert "stopped" not in _clocks(client, episode)["tt-initial-assessment"]
    skewed = operate(client, episode, "record-contact", contact("assessment", date_="2026-11-23T12:04:00+00:00"))
    assert skewed.status_code == 200, skewed.text
    assert _clocks(client, episode)["tt-initial-assessment"]["stopped"] == "2026-11-23T12:04:00Z"


def test_a_pcmis_contact_without_a_therapist_is_recorded_on_the_episode_all_the_same(client) -> None:
    episode = tt_episode(client, received="2026-10-01T10:00:00+01:00")
    row = rows(_pcmis(("assessment", "attended", "2026-10-20T10:00:00+01:00")).decode())[0] | {"therapist": ""}
    reply = _ingest_pcmis(client, to_csv([row]))[0]
    assert reply["outcome"] == "accepted" and "issues" not in reply, reply
    assert _clocks(client, episode)["tt-initial-assessment"]["stopped"] == "2026-10-20T10:00:00+01:00"


def test_a_pcmis_contact_is_not_guessed_onto_one_of_several_open_episodes(client) -> None:
    mid = tt_episode(client, received="2026-10-01T10:00:00+01:00", ref="R-MID")
    west = route(client, referral("north-essex-west", "R-WEST", "2026-10-02T10:00:00+01:00", "1990-01-01", practice="F81001"))
    assert west.status_code == 201, west.text
    reply = _ingest_pcmis(client, _pcmis(("assessment", "attended", "2026-10-20T10:00:00+01:00")))[0]
    assert reply["outcome"] == "accepted" and "2 open Talking Therapies episodes" in reply["issues"][0]["diagnostics"]
    assert "stopped" not in _clocks(client, mid)["tt-initial-assessment"]
    assert "episodeOfCare" not in row_encounter(client, reply)


def _systmone_for(nhs: str, first: str, second: str) -> bytes:
    records = rows(SYSTMONE.read_text())[:2]
    for record, when in zip(records, (first, second), strict=True):
        record["nhs_number"], record["contact_time"] = nhs, when
        record["contact_id"] = f"{record['contact_id']}-{nhs}"
    return to_csv(records)


def test_step_up_after_an_mhp_with_dialog_plus_starts_the_4_week_clock_PC_06(client) -> None:
    assert client.post("/ingest/systmone", content=SYSTMONE.read_bytes(), headers={"Content-Type": "text/csv"}).status_code == 200
    body = referral(
        "rdash-rotherham",
        "R-UP",
        "2026-11-12T10:00:00+00:00",
        "1980-01-01",
        nhs_number="9990000166",
        source="mhp",
        step="pcmhh",
        practice="C87001",
    )
    reply = route(client, body)
    assert reply.status_code == 201, reply.text
    assert param(reply.json(), "step") == "pcmhh"


def test_the_4_week_clock_stops_only_when_all_three_pc08_items_exist_PC_08(client, app, clock) -> None:
    body = json.loads((PATHWAYS / "pc-step-up-from-secondary-care.servicerequest.json").read_text())
    episode = episode_of(route(client, body).json())
    operate(client, episode, "allocate", {"resourceType": "Parameters", "parameter": [{"name": "practitioner", "valueString": "KW"}]})
    clock.set(datetime.fromisoformat("2026-11-26T12:00:00+00:00"))  # contacts are recorded once they have happened
    operate(client, episode, "record-contact", contact("assessment", date_="2026-11-24T10:00:00+00:00"))
    operate(client, episode, "record-contact", contact("treatment", date_="2026-11-26T10:00:00+00:00"))
    clocks = _clocks(client, episode)
    assert "stopped" not in clocks["pcmhh-4-week-wait"]  # no baseline outcome measure yet
    assert "stopped" in clocks["pcmhh-screening"]  # PC-07: allocated
    extract = _systmone_for("9990000220", "2026-11-25T14:00:00+00:00", "2026-11-27T14:00:00+00:00")
    assert client.post("/ingest/systmone", content=extract, headers={"Content-Type": "text/csv"}).json()["accepted"] == 2
    app.state.pathways.tick(datetime.fromisoformat("2026-11-28T10:00:00+00:00"))
    clocks = _clocks(client, episode)
    assert clocks["pcmhh-4-week-wait"]["stopped"] == "2026-11-26T10:00:00Z"  # the last of the three items
    app.state.pathways.tick(datetime.fromisoformat("2026-12-30T10:00:00+00:00"))
    assert not _tasks(client, "clock-pcmhh-4-week-wait")


def _systmone_row(nhs: str, when: str, role: str, code: str = "XaL0u", plan_agreed: str = "Y") -> dict[str, str]:
    """The fixture's first SystmOne row (a complete PHQ-9 and DIALOG, a DIALOG+ care plan) for the patient."""
    record = rows(SYSTMONE.read_text())[0]
    return record | {
        "contact_id": f"S1-{nhs}-{when}",
        "nhs_number": nhs,
        "contact_time": when,
        "contact_code": code,
        "clinician_role": role,
        "care_plan_agreed_mhs009": plan_agreed,
    }


def _ingest_systmone(client, *records: dict[str, str]) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    reply = client.post("/ingest/systmone", content=to_csv(list(records)), headers={"Content-Type": "text/csv"})
    assert reply.status_code == 200, reply.text
    return list(reply.json()["rows"])


def test_a_hub_contact_in_systmone_is_the_assessment_and_with_its_scores_and_care_plan_stops_the_4_week_clock_PC_04_PC_08(
    client,
) -> None:
    body = json.loads((PATHWAYS / "pc-step-up-from-secondary-care.servicerequest.json").read_text())
    episode = episode_of(route(client, body).json())
    assert "stopped" not in _clocks(client, episode)["pcmhh-4-week-wait"]
    # the hub's first contact, in SystmOne: PHQ-9 and DIALOG scored (the baseline) and a DIALOG+ care plan agreed (PC-09);
    # coded as a follow-up (XaZrH), as the SOP has it for the patient's second contact in the service (the MHP had the first)
    reply = _ingest_systmone(client, _systmone_row("9990000220", "2026-11-23T10:00:00+00:00", "PCMHH", code="XaZrH"))[0]
    assert reply["outcome"] == "accepted" and "issues" not in reply, reply
    encounter = row_encounter(client, reply)
    assert encounter["episodeOfCare"] == [{"reference": f"EpisodeOfCare/{episode}"}]  # the SystmOne Encounter itself
    assert "assessment" in [t["coding"][0]["code"] for t in encounter["type"]]
    # PC-08 at once, not at the next tick: the row's own scores and care plan count with its contact
    assert _clocks(client, episode)["pcmhh-4-week-wait"]["stopped"] == "2026-11-23T10:00:00Z"
    assert client.get(f"/fhir/EpisodeOfCare/{episode}").json()["status"] == "active"
    assert "PC-08" in _explained(client, episode)
    follow_up = _ingest_systmone(client, _systmone_row("9990000220", "2026-11-23T11:00:00+00:00", "PCMHH", code="XaZrH"))[0]
    assert "issues" not in follow_up
    assert "treatment" in [t["coding"][0]["code"] for t in row_encounter(client, follow_up)["type"]]  # then interventions
    assert len(_on_episode(client, episode)) == 2


def test_a_systmone_care_plan_without_its_agreement_does_not_stop_the_4_week_clock_PC_08_PC_09(client) -> None:
    body = json.loads((PATHWAYS / "pc-step-up-from-secondary-care.servicerequest.json").read_text())
    episode = episode_of(route(client, body).json())
    reply = _ingest_systmone(client, _systmone_row("9990000220", "2026-11-23T10:00:00+00:00", "PCMHH", plan_agreed="N"))[0]
    assert reply["outcome"] == "accepted" and "issues" not in reply
    assert row_encounter(client, reply)["episodeOfCare"] == [{"reference": f"EpisodeOfCare/{episode}"}]
    assert "stopped" not in _clocks(client, episode)["pcmhh-4-week-wait"]  # assessed and scored, but no plan in force yet


def _mhp_episode(client, ref: str) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """A primary care episode at the MHP step, and its patient's NHS number."""
    reply = route(client, referral("rdash-rotherham", ref, "2026-11-02T10:00:00+00:00", "1980-01-01", step="mhp", practice="C87001"))
    episode = episode_of(reply.json())
    patient = client.get(f"/fhir/{client.get(f'/fhir/EpisodeOfCare/{episode}').json()['patient']['reference']}").json()
    return episode, next(i["value"] for i in patient["identifier"] if i["system"].endswith("/nhs-number"))


def test_a_fifth_mhp_session_from_systmone_joins_the_episode_uncounted_with_a_warning_PC_05(client) -> None:
    episode, number = _mhp_episode(client, "R-S1")
    sessions = [_systmone_row(number, f"2026-11-{day:02d}T10:00:00+00:00", "MHP", code="XaZrH") for day in (3, 4, 5, 6, 9)]
    replies = _ingest_systmone(client, *sessions)
    assert [r["outcome"] for r in replies] == ["accepted"] * 5 and all("issues" not in r for r in replies[:4])
    warning = replies[4]["issues"][0]
    assert warning["severity"] == "warning" and warning["expression"] == ["row[5].contact_id"]
    assert f"not recorded on a primary care episode: EpisodeOfCare/{episode} refuses it: PC-05" in warning["diagnostics"]
    assert len(_on_episode(client, episode)) == 5  # the fifth joins the episode, uncounted
    assert "mhp-session" not in [t["coding"][0]["code"] for t in row_encounter(client, replies[4])["type"]]


def test_a_triage_coach_contact_in_systmone_is_a_patient_contact_on_the_episode_PC_04(client) -> None:
    episode, number = _mhp_episode(client, "R-S2")
    row = _ingest_systmone(client, _systmone_row(number, "2026-11-05T10:00:00+00:00", "MHWBTC"))[0]
    assert "issues" not in row
    assert "patient-contact" in [t["coding"][0]["code"] for t in row_encounter(client, row)["type"]]


def _clocks(client, episode: str) -> dict[str, dict[str, Any]]:  # type: ignore[no-untyped-def]
    from fhir_mapping.episodes import episode_clocks

    return episode_clocks(client.get(f"/fhir/EpisodeOfCare/{episode}").json())


def test_step_out_of_the_hub_names_a_destination_and_books_a_keeping_well_call_PC_12_PC_13(client, app) -> None:
    body = json.loads((PATHWAYS / "pc-step-up-from-secondary-care.servicerequest.json").read_text())
    episode = episode_of(route(client, body).json())
    out = operate(
        client,
        episode,
        "step",
        {
            "resourceType": "Parameters",
            "parameter": [
                {"name": "direction", "valueCode": "out"},
                {"name": "to", "valueString": "gp"},
                {"name": "practitioner", "valueString": "KW"},
            ],
        },
    )
    assert out.status_code == 200 and out.json()["status"] == "finished"
    assert _clocks(client, episode)["keeping-well-call"]["due"] == to_fhir_instant(datetime(2027, 2, 23, 12, 0, tzinfo=NOW.tzinfo))
    assert [c for c in _all(client, "CommunicationRequest") if c["category"][0]["coding"][0]["code"] == "pc-transfer-of-care"]
    app.state.pathways.tick(NOW + timedelta(days=95))
    assert len(_tasks(client, "clock-keeping-well-call")) == 1
    again = operate(client, episode, "record-contact", contact("treatment"))
    assert again.status_code == 422  # a finished episode takes no more contacts


def _step_out(client, episode: str):  # type: ignore[no-untyped-def]
    out = {"resourceType": "Parameters", "parameter": [{"name": "direction", "valueCode": "out"}, {"name": "to", "valueString": "gp"}]}
    return operate(client, episode, "step", out)


def _explained(client, episode: str) -> str:  # type: ignore[no-untyped-def]
    explained = client.get(f"/fhir/EpisodeOfCare/{episode}/$explain").json()
    return " ".join(p["valueString"] for p in explained["parameter"] if p["name"] == "step")


def test_leaving_the_service_records_which_outcome_measures_were_completed_PC_14(client) -> None:
    episode = episode_of(route(client, json.loads((PATHWAYS / "pc-step-up-from-secondary-care.servicerequest.json").read_text())).json())
    early, late = rows(SYSTMONE.read_text())[:2]  # the referral came on 2026-11-20
    early |= {"nhs_number": "9990000220", "contact_id": "PC14-EARLY", "contact_time": "2026-10-22T10:00:00+01:00"}  # 29 days before
    late |= {"nhs_number": "9990000220", "contact_id": "PC14-LATE", "contact_time": "2026-11-25T10:00:00+00:00"}
    late |= {k: "" for k in late if k.startswith(("reqol_", "gbo_"))}  # DIALOG only
    accepted = client.post("/ingest/systmone", content=to_csv([early, late]), headers={"Content-Type": "text/csv"}).json()["accepted"]
    assert accepted == 2
    assert _step_out(client, episode).status_code == 200
    assert "PC-14: only 1 of the outcome measures completed in this episode (dialog; not gbo, reqol-10)" in _explained(client, episode)
    assert "the SOP asks for at least 2" in _explained(client, episode)
    letter = next(c for c in _all(client, "CommunicationRequest") if c["category"][0]["coding"][0]["code"] == "pc-transfer-of-care")
    assert {"contentString": "Outcome measures completed in this episode (PC-14): dialog"} in letter["payload"]

    assert client.post("/ingest/systmone", content=SYSTMONE.read_bytes(), headers={"Content-Type": "text/csv"}).status_code == 200
    body = referral("rdash-rotherham", "R-PC14", "2026-11-12T10:00:00+00:00", "1980-01-01", nhs_number="9990000166", source="mhp")
    done = episode_of(route(client, body | {"id": "pc14-all-three"}).json())  # the 10 Nov contact scored all three
    assert _step_out(client, done).status_code == 200
    assert "PC-14: 3 outcome measures completed in this episode: gbo, dialog, reqol-10" in _explained(client, done)


def test_step_across_without_a_destination_is_refused_PC_13(client) -> None:
    body = json.loads((PATHWAYS / "pc-step-up-from-secondary-care.servicerequest.json").read_text())
    episode = episode_of(route(client, body).json())
    reply = operate(
        client,
        episode,
        "step",
        {
            "resourceType": "Parameters",
            "parameter": [{"name": "direction", "valueCode": "across"}, {"name": "to", "valueString": "elsewhere"}],
        },
    )
    assert reply.status_code == 400 and "PC-13" in reply.json()["issue"][0]["diagnostics"]


def test_step_up_to_the_hub_from_mhp_sessions_needs_dialog_plus_PC_06(client) -> None:
    reply = route(client, referral("rdash-rotherham", "R-MHP2", "2026-11-02T10:00:00+00:00", "1980-01-01", step="mhp", practice="C87001"))
    episode = episode_of(reply.json())
    up = {"resourceType": "Parameters", "parameter": [{"name": "direction", "valueCode": "up"}, {"name": "to", "valueString": "pcmhh"}]}
    refused = operate(client, episode, "step", up)
    assert refused.status_code == 422 and "DIALOG+" in refused.json()["issue"][0]["diagnostics"]


def test_the_waitlist_report_as_csv_has_every_dimension(client) -> None:
    tt_episode(client, received="2026-10-20T10:00:00+01:00")
    text = client.get("/reports/waitlist", params={"format": "csv"}).text
    table = list(csv.DictReader(io.StringIO(text)))
    assert table[0]["locality"] == "Mid-Essex" and table[0]["step"] == "step-2" and table[0]["days_waiting"] == "34"
    assert client.get("/reports/waitlist", params={"service": "nope"}).status_code == 400


def test_a_waitlist_csv_cell_that_a_spreadsheet_would_run_is_written_as_text(client) -> None:
    """OWASP CSV injection: a therapist named as a formula reaches the report's CSV as text, never as a formula."""
    episode = tt_episode(client, received="2026-10-01T10:00:00+01:00")
    formula = '=HYPERLINK("http://evil","x")'
    allocation = {"resourceType": "Parameters", "parameter": [{"name": "practitioner", "valueString": formula}]}
    assert operate(client, episode, "allocate", allocation).status_code == 200
    assert client.get("/reports/waitlist").json()["rows"][0]["therapist"] == formula  # the JSON keeps the value as it is
    table = list(csv.DictReader(io.StringIO(client.get("/reports/waitlist", params={"format": "csv"}).text)))
    assert [(r["episode"], r["therapist"]) for r in table] == [(episode, "'" + formula)]
    assert all(not cell.startswith(("=", "+", "-", "@", "\t", "\r")) for r in table for cell in r.values())


def test_report_waitlist_command_draws_the_plot_from_the_demo(tmp_path: Path) -> None:
    import subprocess
    import sys

    png = tmp_path / "waitlist.png"
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "report", "waitlist", "--demo", "--now", "2026-11-23T12:00:00+00:00", "--plot", str(png)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "first-appointment" in result.stdout and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "TT-08 north-essex-mid:" in result.stdout and "entered treatment" in result.stdout


def test_twelve_weeks_on_the_hub_caseload_without_a_care_plan_review_makes_a_task_PC_10(client, app, clock) -> None:
    body = json.loads((PATHWAYS / "pc-step-up-from-secondary-care.servicerequest.json").read_text())
    episode = episode_of(route(client, body).json())
    operate(client, episode, "allocate", {"resourceType": "Parameters", "parameter": [{"name": "practitioner", "valueString": "KW"}]})
    assert _clocks(client, episode)["pcmhh-caseload-review"]["due"] == "2027-02-16T00:00:00Z"  # the end of the day 12 weeks from allocation
    review = contact("care-plan-review", date_="2027-01-04T10:00:00+00:00")
    clock.set(datetime.fromisoformat("2027-01-04T11:00:00+00:00"))
    assert operate(client, episode, "record-contact", review).status_code == 200
    assert _clocks(client, episode)["pcmhh-caseload-review"]["due"] == "2027-03-30T00:00:00+01:00"  # restarted from the review (BST)
    app.state.pathways.tick(datetime.fromisoformat("2027-03-01T12:00:00+00:00"))
    assert not _tasks(client, "clock-pcmhh-caseload-review")
    app.state.pathways.tick(datetime.fromisoformat("2027-03-30T12:00:00+01:00"))
    assert len(_tasks(client, "clock-pcmhh-caseload-review")) == 1
