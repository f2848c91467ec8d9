"""HL7 v2 sender profiles (gateway/epr/rules/senders/*.yaml): validated at load, matched by MSH-3/MSH-4 or peer, safe defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cas.rules.schema import RuleFileError
from gateway.epr.rules.sender_schema import UNKNOWN_SENDER, load_senders


def test_the_shipped_profiles_load_and_rio_is_found_by_its_application_and_facility() -> None:
    profile = load_senders().for_message("rio", "rvn")
    assert profile.id == "rio-awp" and profile.time_zone == "Europe/London"
    assert profile.system_for("RVN") == "https://fhir.awp.nhs.uk/Id/rio-client-id"


def test_an_unknown_sender_gets_safe_defaults_with_local_numbers_kept_apart_by_facility() -> None:
    registry = load_senders()
    one, other = registry.for_message("PAS", "RXX"), registry.for_message("PAS", "RYY")
    assert one.id == UNKNOWN_SENDER and one.time_zone == "Europe/London" and one.destination is None
    assert one.may_send("ADT", "A08") and one.system_for("PAS") != other.system_for("PAS")


def test_a_profile_is_found_by_its_mllp_peer_when_msh_names_nothing_known(tmp_path: Path) -> None:
    (tmp_path / "pas-x.yaml").write_text("id: pas-x\nname: Trust X PAS\nmatch:\n  peers: [10.1.0.0/16]\n")
    assert load_senders(tmp_path).for_message("A", "B", peer="10.1.2.3").id == "pas-x"
    assert load_senders(tmp_path).for_message("A", "B", peer="10.2.0.1").id == UNKNOWN_SENDER


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ("id: pas-x\nname: X\nmatch: {}\n", "match"),
        ("id: pas-x\nname: Trust X\nmatch: {sending_facility: [RXX]}\ntime_zone: Europe/Londres\n", "time_zone"),
        ("id: pas-x\nname: Trust X\nmatch: {sending_facility: [RXX]}\nmessage_types: [ADT]\n", "message_types"),
        ("id: pas-x\nname: Trust X\nmatch: {sending_facility: [RXX]}\ndestination: {host: h, port: 0}\n", "destination.port"),
        ("id: pas-y\nname: Trust X\nmatch: {sending_facility: [RXX]}\n", "must match the file name"),
    ],
    ids=["matches-nothing", "bad-zone", "bad-type", "bad-port", "id-not-file-name"],
)
def test_a_bad_sender_profile_stops_the_load_naming_its_file_and_field(tmp_path: Path, body: str, names: str) -> None:
    (tmp_path / "pas-x.yaml").write_text(body)
    with pytest.raises(RuleFileError, match="pas-x.yaml") as raised:
        load_senders(tmp_path)
    assert names in str(raised.value)
