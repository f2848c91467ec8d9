"""HL7 v2 datatypes and variants as UK senders write them (issue 32): escapes, TS times, random valid messages."""

from __future__ import annotations

import socket
from datetime import UTC, date, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.hl7v2 import Hl7Error, Hl7Reading, MllpFramer, frame, parse_hl7
from adapters.hl7v2_fields import escape, unescape
from common.datetimes import LocalTimeMissing, parse_hl7_time
from tests.conftest import ROOT
from tests.test_hl7v2 import mllp_port, msa  # noqa: F401 - the MLLP listener fixture

UK = ROOT / "fixtures" / "uk-hl7v2"


@settings(max_examples=500)
@given(st.text())
def test_escaping_then_unescaping_returns_any_text_unchanged(text: str) -> None:
    escaped = escape(text)
    assert not set(escaped) & set("|^~&\r\n") and unescape(escaped) == text


@pytest.mark.parametrize(
    ("sent", "read"),
    [
        ("BP 120\\F\\80 \\T\\ stable", "BP 120|80 & stable"),
        ("a\\E\\F\\E\\b", "a\\F\\b"),  # an escaped escape character is never read again
        ("one\\.br\\two", "one\ntwo"),
        ("x\\S\\y\\R\\z", "x^y~z"),
        ("37\\XC2B0\\C", "37\u00b0C"),  # UTF-8 bytes in hex
        ("caf\\XE9\\", "caf\u00e9"),  # 8859/1 bytes in hex
        ("\\H\\bold\\N\\", "bold"),
        ("C:\\temp", "C:\\temp"),  # a lone backslash that starts no escape is kept
    ],
)
def test_every_escape_sequence_is_decoded_exactly(sent: str, read: str) -> None:
    assert unescape(sent) == read


@pytest.mark.parametrize(
    ("sent", "instant", "day"),
    [
        ("20260701103000", datetime(2026, 7, 1, 9, 30, tzinfo=UTC), date(2026, 7, 1)),  # BST
        ("20261201103000", datetime(2026, 12, 1, 10, 30, tzinfo=UTC), date(2026, 12, 1)),  # GMT
        ("202607011030", datetime(2026, 7, 1, 9, 30, tzinfo=UTC), date(2026, 7, 1)),  # to the minute
        ("20260701103015.1234", datetime(2026, 7, 1, 9, 30, 15, 123400, tzinfo=UTC), date(2026, 7, 1)),
        ("20260701", datetime(2026, 6, 30, 23, 0, tzinfo=UTC), date(2026, 7, 1)),  # to the day: the London day
        ("20260701103000+0000", datetime(2026, 7, 1, 10, 30, tzinfo=UTC), date(2026, 7, 1)),  # an offset is the offset
        ("20260701103000-0130^S", datetime(2026, 7, 1, 12, 0, tzinfo=UTC), date(2026, 7, 1)),
    ],
)
def test_a_ts_without_an_offset_is_europe_london_local_time(sent: str, instant: datetime, day: date) -> None:
    read = parse_hl7_time(sent)
    assert (read.moment, read.day, read.repeated_hour) == (instant, day, False)


def test_the_repeated_autumn_hour_is_read_as_the_first_and_the_skipped_spring_hour_does_not_exist() -> None:
    repeated = parse_hl7_time("20261025013000")
    assert repeated.moment == datetime(2026, 10, 25, 0, 30, tzinfo=UTC) and repeated.repeated_hour
    with pytest.raises(LocalTimeMissing):
        parse_hl7_time("20260329013000")
    with pytest.raises(ValueError, match="not a real"):
        parse_hl7_time("20260230")


# A valid message in any of the variants UK senders use: segment ends, MSH-9 parts, versions, character sets,
# NHS number placements, times with or without an offset; any note text, escaped as ER7 requires.
_PLACEMENTS = ["{n}^^^NHS^NH", "{n}^^^^NHS", "{n}^^^NHS", "{n}^^^nhs^PI", "{n}^^^&2.16.840.1.113883.2.1.4.1&ISO", "L1^^^RXX^PI~{n}^^^^NH"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    terminator=st.sampled_from(["\r", "\n", "\r\n"]),
    msh9=st.sampled_from(["ORU^R01", "ORU^R01^ORU_R01"]),
    version=st.sampled_from(["2.3", "2.3.1", "2.4", "2.5", "2.5.1"]),
    charset=st.sampled_from([("", "utf-8"), ("UNICODE UTF-8", "utf-8"), ("8859/1", "latin-1")]),
    placement=st.sampled_from(_PLACEMENTS),
    offset=st.sampled_from(["", "+0000", "+0100"]),
    family=st.text(st.characters(codec="latin-1", exclude_categories=("Cc", "Cs", "Zs")), min_size=1, max_size=20),
    note=st.text(st.characters(codec="latin-1"), min_size=1, max_size=80).filter(lambda t: t.strip()),
)
def test_a_random_valid_message_in_any_variant_is_taken_and_read_exactly(
    terminator: str, msh9: str, version: str, charset: tuple[str, str], placement: str, offset: str, family: str, note: str
) -> None:
    pid3 = placement.format(n="9990000638")
    segments = [
        f"MSH|^~\\&|PAS|RXX|IAPGW|IAP|20260615120000{offset}||{msh9}|C-1|P|{version}|||||GBR|{charset[0]}",
        f"PID|1||{pid3}||{escape(family)}^Alex||19900101|F",
        "OBR|1|O-1|N-1|11488-4^Consultation note^LN",
        f"OBX|1|TX|11488-4^Consultation note^LN||{escape(note)}||||||F|||20260615115500{offset}",
    ]
    message = parse_hl7(terminator.join(segments).encode(charset[1]))
    assert message.patient.nhs_number == "9990000638" and message.patient.family == (family.strip() or None)
    assert [n.text for n in message.notes] == [note] and message.header.version == version
    assert message.notes[0].written_at == datetime(2026, 6, 15, 10 if offset == "+0100" or not offset else 11, 55, tzinfo=UTC)


def _mutations(good: bytes, seed: int) -> bytes:
    import random

    rng = random.Random(seed)
    out = bytearray(good)
    for _ in range(rng.randint(1, 6)):
        at = rng.randrange(len(out))
        choice = rng.randrange(3)
        if choice == 0:
            del out[at : at + rng.randint(1, 8)]
        elif choice == 1:
            out[at:at] = rng.choice([b"|", b"^", b"~", b"\\", b"&", b"\r", b"\n", b"\\X", b"\\F", b"\xff", b"ZZZ|", b"0"])
        else:
            out[at] = rng.randrange(256)
    return bytes(out.replace(b"\x0b", b"").replace(b"\x1c", b""))


def test_mutated_uk_messages_never_break_the_mllp_listener_and_each_gets_an_ack(mllp_port: int) -> None:  # noqa: F811
    corpus = [p.read_bytes() for p in sorted(UK.glob("*.hl7"))]
    messages = [_mutations(corpus[seed % len(corpus)], seed) for seed in range(40)]
    with socket.create_connection(("127.0.0.1", mllp_port)) as sock:
        sock.settimeout(30)
        framer, acks = MllpFramer(), list[bytes]()
        for sent, message in enumerate(messages, start=1):
            sock.sendall(frame(message))
            while len(acks) < sent:
                data = sock.recv(65536)
                assert data, f"the gateway closed the connection after {len(acks)} ACKs"
                acks += framer.feed(data)
    assert len(acks) == len(messages) and all(msa(a)[1] in ("AA", "AE", "AR") for a in acks)


def test_a_mutated_message_is_refused_only_with_an_hl7_error() -> None:
    corpus = sorted(UK.glob("*.hl7"))
    for seed in range(300):
        try:
            parse_hl7(_mutations(corpus[seed % len(corpus)].read_bytes(), seed))
        except Hl7Error:
            pass


@pytest.mark.parametrize(
    ("placement", "nhs_number", "local"),
    [("any", "9990000646", ()), ("authority", "", ("9990000646",)), ("type-code", "9990000646", ())],
)
def test_a_senders_nhs_number_placement_says_which_pid3_repetitions_are_the_nhs_number(
    placement: str, nhs_number: str, local: tuple[str, ...]
) -> None:
    message = (
        b"MSH|^~\\&|PAS|RXX|IAPGW|IAP|20260615120000||ADT^A04|C-1|P|2.4\rEVN|A04\r"
        b"PID|1||9990000646^^^^NHS~L-1^^^RXX^PI||Placed^Sam||19900101|F\r"
    )
    read = parse_hl7(message, lambda application, facility: Hl7Reading(nhs_number_in=placement))
    assert read.patient.nhs_number == nhs_number and tuple(n.value for n in read.local_numbers) == (*local, "L-1")


def test_fields_past_those_the_standard_defines_are_not_read_and_named_in_a_warning_without_values() -> None:
    message = parse_hl7((UK / "pas-a08-v25-lowercase-authority-z-segment.hl7").read_bytes())
    assert message.warnings == ("PID: fields past PID-39 not read",) and message.unused_segments == ("ZCS", "ZPI")
