"""HL7 v2 (2.3 to 2.5.1, RiO and UK PAS/EPR feeds): MLLP framing, and ER7 bytes -> a typed `Hl7Message` (hl7apy).

Messages taken: ADT^A04/A08/A28/A31 (register/update patient), REF^I12 (referral),
ORU^R01 and MDM^T02 (progress notes / documents). Format: docs/formats/rio-hl7v2.md.
Problems become `Hl7Error`s that carry what an ACK needs: AR (the message cannot be
taken: framing, MSH, version, type) or AE (an error in its content), the segment and
field, an HL7 table 0357 error code, and text for MSA-3. No FHIR, no database here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from functools import cache

from hl7apy import load_library, load_reference
from hl7apy.parser import parse_message

from adapters.hl7v2_fields import TimeReading, component, decode, escape, field, read_time, unescape
from adapters.hl7v2_patient import LocalNumber, PidProblem, read_pid
from adapters.referral import Demographics
from common.datetimes import LONDON, Hl7Time

__all__ = [
    "Hl7Error",
    "Hl7Header",
    "Hl7Note",
    "Hl7Referral",
    "Hl7Message",
    "Hl7Reading",
    "LocalNumber",
    "MllpFramer",
    "frame",
    "parse_hl7",
    "build_ack",
    "SUPPORTED",
    "VERSIONS",
]

MLLP_START, MLLP_END = b"\x0b", b"\x1c\x0d"
SUPPORTED = {("ADT", "A04"), ("ADT", "A08"), ("ADT", "A28"), ("ADT", "A31"), ("REF", "I12"), ("ORU", "R01"), ("MDM", "T02")}
REQUIRED_SEGMENTS = {"ADT": ("EVN", "PID"), "REF": ("RF1", "PID"), "ORU": ("PID", "OBR", "OBX"), "MDM": ("EVN", "PID", "TXA", "OBX")}
VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1")  # MSH-12 versions taken (the fields read are the same in each)
# every segment hl7apy's library defines per version: a message made only of these and Z-segments is one hl7apy parses
_SEGMENTS = {version: frozenset(load_library(version).SEGMENTS) for version in VERSIONS}


@dataclass(eq=False)  # not frozen: the interpreter sets __traceback__ on exceptions as they travel
class Hl7Error(Exception):
    """Why a message is refused: ack `AR`/`AE`, location (segment, field), table-0357 code, text (no patient data)."""

    ack: str
    text: str
    segment: str = "MSH"
    field_no: int | None = None
    code: int = 207
    control_id: str | None = None

    def __str__(self) -> str:
        where = f"{self.segment}-{self.field_no}" if self.field_no else self.segment
        return f"{self.ack} {self.code} {where}: {self.text}"


@dataclass(frozen=True)
class Hl7Header:
    control_id: str
    message_type: str
    trigger: str
    sending_application: str
    sending_facility: str
    version: str
    sent_at: datetime | None


@dataclass(frozen=True)
class Hl7Note:
    """A progress note / document from RiO (ORU^R01 OBX, or MDM^T02 TXA + OBX)."""

    note_id: str
    text: str
    title: str
    author: str | None
    written_at: datetime | None


@dataclass(frozen=True)
class Hl7Referral:
    referral_id: str
    reason: str | None
    referred_by: str | None
    referred_at: datetime | None


@dataclass(frozen=True)
class Hl7Message:
    header: Hl7Header
    patient: Demographics
    gp_practice_ods: str | None = None
    notes: tuple[Hl7Note, ...] = ()
    referral: Hl7Referral | None = None
    unused_segments: tuple[str, ...] = dataclasses.field(default=())
    local_numbers: tuple[LocalNumber, ...] = ()  # PID-3 repetitions other than the NHS number
    nhs_status: str | None = None  # NHS Number Status Indicator (01-08) from PID-32, when sent
    warnings: tuple[str, ...] = ()  # how something was read that the sender should know (no patient data)
    birth_date_partial: str | None = None  # PID-7 to the year or month only, as FHIR writes it ("1988", "1988-06")


@dataclass(frozen=True)
class Hl7Reading:
    """How one sender's messages are read (from its sender profile): its local time zone and NHS number placement."""

    local_zone: tzinfo = LONDON
    nhs_number_in: str = "any"  # any | authority | type-code
    status_field: str = "PID-32"


def frame(message: bytes) -> bytes:
    """One message in an MLLP block."""
    return MLLP_START + message + MLLP_END


class MllpFramer:
    """Reassembles MLLP blocks from a TCP stream: several blocks in one read, one block across reads."""

    def __init__(self, max_bytes: int = 1_048_576) -> None:
        self.buffer = b""
        self.max_bytes = max_bytes

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        frames: list[bytes] = []
        while True:
            start = self.buffer.find(MLLP_START)
            if start < 0:
                self.buffer = b""  # bytes outside a block carry no message
                return frames
            end = self.buffer.find(MLLP_END, start)
            if end < 0:
                self.buffer = self.buffer[start:]
                if len(self.buffer) > self.max_bytes:
                    raise Hl7Error("AR", f"MLLP block over {self.max_bytes} bytes", code=207)
                return frames
            if end - start - 1 > self.max_bytes:  # arrived whole in one read, but no smaller for it
                raise Hl7Error("AR", f"MLLP block over {self.max_bytes} bytes", code=207)
            frames.append(self.buffer[start + 1 : end])
            self.buffer = self.buffer[end + 2 :]


def parse_hl7(raw: bytes, reading_for: Callable[[str, str], Hl7Reading] | None = None) -> Hl7Message:
    """Parse one ER7 message; raises Hl7Error naming what is wrong.

    `reading_for(MSH-3, MSH-4)` says how this sender is read (its time zone, NHS number placement): the
    gateway's sender profiles (gateway.epr.rules.sender_schema); without it, `Hl7Reading()` (Europe/London, any placement).
    """
    text = decode(raw).replace("\r\n", "\r").replace("\n", "\r").strip("\r")
    if not text.startswith("MSH"):
        raise Hl7Error("AR", "message does not start with an MSH segment", "MSH", None, 100)
    control_id = _field(text.split("\r", 1)[0], 10)
    if len(text) < 8 or text[3:8] != "|^~\\&":
        raise Hl7Error("AR", "MSH-1/MSH-2: field separator and encoding characters must be |^~\\&", "MSH", 2, 102, control_id)
    msh = text.split("\r", 1)[0]
    msg_type = _field(msh, 9)
    version = _field(msh, 12).split("^")[0]
    if not control_id:
        raise Hl7Error("AR", "MSH-10 message control id is required", "MSH", 10, 101)
    if not msg_type:
        raise Hl7Error("AR", "MSH-9 message type is required", "MSH", 9, 101, control_id)
    if version not in VERSIONS:
        raise Hl7Error("AR", f"MSH-12 version {version[:10]!r} is not supported ({', '.join(VERSIONS)})", "MSH", 12, 203, control_id)
    parts = msg_type.split("^")
    kind, trigger = parts[0], parts[1] if len(parts) > 1 else ""
    if (kind, trigger) not in SUPPORTED:
        code = 200 if kind not in {k for k, _ in SUPPORTED} else 201
        raise Hl7Error(
            "AR",
            f"MSH-9 {kind}^{trigger} is not taken here; supported: {sorted('^'.join(s) for s in SUPPORTED)}",
            "MSH",
            9,
            code,
            control_id,
        )
    segments = [s for s in text.split("\r") if s]
    names = [s[:3] for s in segments]
    for required in REQUIRED_SEGMENTS[kind]:
        if required not in names:
            raise Hl7Error("AE", f"{kind}^{trigger} needs a {required} segment", required, None, 100, control_id)
    if not _plain_segments(segments, version):
        try:
            parse_message("\r".join(segments), find_groups=False)
        except Exception as exc:  # hl7apy raises many types for malformed ER7; all mean "cannot parse"
            raise Hl7Error("AR", f"cannot parse the message: {type(exc).__name__}", "MSH", None, 102, control_id) from None
    application, facility = _field(msh, 3).split("^")[0], _field(msh, 4).split("^")[0]
    reading = reading_for(application, facility) if reading_for else Hl7Reading()
    times = _Times(reading.local_zone, control_id)
    header = Hl7Header(
        control_id=control_id,
        message_type=kind,
        trigger=trigger,
        sending_application=application,
        sending_facility=facility,
        version=version,
        sent_at=times.at(_field(msh, 7), "MSH", 7, required=False),
    )
    pid = _segment(segments, "PID")
    born = times.read(_field(pid, 7), "PID", 7)
    try:
        person = read_pid(pid, reading.nhs_number_in, reading.status_field, born.day if born else None)
    except PidProblem as problem:
        raise Hl7Error("AE", f"PID-{problem.field_no}: {problem.text}", "PID", problem.field_no, problem.code, control_id) from None
    pd1 = _segment(segments, "PD1")
    gp = _component(_field(pd1, 3), 3) if pd1 else None
    notes: tuple[Hl7Note, ...] = ()
    referral = None
    if kind == "ORU":
        notes = _oru_notes(segments, times)
    elif kind == "MDM":
        notes = _mdm_notes(segments, times)
    elif kind == "REF":
        referral = _referral(segments, times)
    known = {"MSH", "EVN", "PID", "PD1", "PV1", "RF1", "PRD", "OBR", "OBX", "TXA", "NTE"}
    unused = tuple(sorted({n for n in names if n not in known}))
    times.warnings += _fields_past_the_standard(segments, version)
    return Hl7Message(
        header,
        person.patient,
        gp or None,
        notes,
        referral,
        unused,
        person.local_numbers,
        person.nhs_status,
        tuple(times.warnings),
        _partial_date(_field(pid, 7)),
    )


def _partial_date(value: str) -> str | None:
    """A TS to the year or the month, as a FHIR partial date (exact: never a 1 January the sender did not send)."""
    digits = value.split("^")[0][:8]
    if len(digits) in (4, 6) and digits.isdigit():
        return digits[:4] if len(digits) == 4 else f"{digits[:4]}-{digits[4:]}"
    return None


def _fields_past_the_standard(segments: list[str], version: str) -> list[str]:
    """Warnings (names, never values) for segments with more fields than the standard defines: they are not read."""
    warnings = []
    for segment in segments:
        name = segment[:3]
        defined = _defined_fields(name, version) if name in _SEGMENTS[version] else None
        sent = len(segment.split("|")) - (0 if name == "MSH" else 1)
        if defined and sent > defined and any(segment.split("|")[defined + (0 if name == "MSH" else 1) :]):
            warning = f"{name}: fields past {name}-{defined} not read"
            if warning not in warnings:
                warnings.append(warning)
    return warnings


@cache
def _defined_fields(name: str, version: str) -> int | None:
    try:
        return len(load_reference(name, "Segment", version)[1])
    except Exception:  # hl7apy raises its own types for a segment it has no structure for
        return None


def _plain_segments(segments: list[str], version: str = "2.4") -> bool:
    """Whether hl7apy is sure to parse these segments, so its parse (~3 ms, most of an ADT's cost) can be skipped.

    Fields are read positionally here (senders send no groups); hl7apy is run only for the structure
    check, and in its default (tolerant) mode, for a message whose MSH passed the checks above,
    it refuses only a segment whose name it does not know. A message whose every segment starts
    with a segment name hl7apy knows for its version, or a Z-segment name, then `|` (or ends) is one it
    parses; anything else still goes through hl7apy. tests/test_hl7v2.py checks this against
    hl7apy itself on generated messages.
    """
    known = _SEGMENTS[version]
    for segment in segments:
        name = segment[:3]
        if not (name in known or (len(name) == 3 and name[0] == "Z")) or segment[3:4] not in ("|", ""):
            return False
    return True


def _segment(segments: list[str], name: str) -> str:
    return next((s for s in segments if s.startswith(name + "|")), "")


_field, _component = field, component


class _Times:
    """Reads a message's TS fields in its sender's zone, keeping a warning for each time in the repeated autumn hour."""

    def __init__(self, zone: tzinfo, control_id: str) -> None:
        self.zone, self.control_id = zone, control_id
        self.warnings: list[str] = []

    def read(self, value: str, segment: str, field_no: int, required: bool = False) -> Hl7Time | None:
        where = f"{segment}-{field_no}"
        if not value or not value.split("^")[0]:
            if required:
                raise Hl7Error("AE", f"{where} is required", segment, field_no, 101, self.control_id)
            return None
        try:
            read = read_time(value, self.zone)
        except TimeReading as problem:
            raise Hl7Error("AE", f"{where} {problem.text}", segment, field_no, 102, self.control_id) from None
        if read.repeated_hour:
            self.warnings.append(f"{where}: local time in the hour the clocks repeat; read as the first (summer time)")
        return read

    def at(self, value: str, segment: str, field_no: int, required: bool = False) -> datetime | None:
        read = self.read(value, segment, field_no, required)
        return read.moment if read else None


def _oru_notes(segments: list[str], times: _Times) -> tuple[Hl7Note, ...]:
    control_id = times.control_id
    obr = _segment(segments, "OBR")
    title = _component(_field(obr, 4), 2) or "RiO progress note"
    notes = []
    for index, obx in enumerate(s for s in segments if s.startswith("OBX|")):
        if _field(obx, 2) not in ("TX", "FT", "ST"):
            raise Hl7Error("AE", f"OBX-2 value type {_field(obx, 2)!r}: notes are TX, FT or ST", "OBX", 2, 103, control_id)
        text = _field(obx, 5).replace("~", "\n")
        if not text:
            raise Hl7Error("AE", "OBX-5 note text is empty", "OBX", 5, 101, control_id)
        notes.append(
            Hl7Note(
                note_id=f"{_field(obr, 3) or _field(obr, 2) or control_id}-{index + 1}",
                text=unescape(text),
                title=title,
                author=_component(_field(obx, 16), 2) or _component(_field(obr, 32), 1) or None,
                written_at=times.at(_field(obx, 14), "OBX", 14) or times.at(_field(obr, 7), "OBR", 7),
            )
        )
    return tuple(notes)


def _mdm_notes(segments: list[str], times: _Times) -> tuple[Hl7Note, ...]:
    control_id = times.control_id
    txa = _segment(segments, "TXA")
    document_id = _component(_field(txa, 12), 1) or control_id
    text = "\n".join(unescape(_field(obx, 5).replace("~", "\n")) for obx in segments if obx.startswith("OBX|"))
    if not text.strip():
        raise Hl7Error("AE", "OBX-5 document text is empty", "OBX", 5, 101, control_id)
    return (
        Hl7Note(
            note_id=document_id,
            text=text,
            title=_component(_field(txa, 2), 2) or _field(txa, 2) or "RiO document",
            author=_component(_field(txa, 9), 2) or _component(_field(txa, 9), 1) or None,
            written_at=times.at(_field(txa, 4), "TXA", 4) or times.at(_field(txa, 6), "TXA", 6),
        ),
    )


def _referral(segments: list[str], times: _Times) -> Hl7Referral:
    control_id = times.control_id
    rf1 = _segment(segments, "RF1")
    referral_id = _component(_field(rf1, 6), 1)
    if not referral_id:
        raise Hl7Error("AE", "RF1-6 originating referral identifier is required", "RF1", 6, 101, control_id)
    prd = _segment(segments, "PRD")
    return Hl7Referral(
        referral_id=referral_id,
        reason=_component(_field(rf1, 10), 2) or _component(_field(rf1, 10), 1) or None,
        referred_by=" ".join(p for p in (_component(_field(prd, 2), 2), _component(_field(prd, 2), 1)) if p) or None,
        referred_at=times.at(_field(rf1, 7), "RF1", 7),
    )


def build_ack(
    control_id: str | None,
    trigger: str,
    error: Hl7Error | None,
    now: datetime,
    receiving: tuple[str, str] = ("IAPGW", "IAP"),
    version: str = "2.4",
) -> bytes:
    """An ACK for `control_id` (MSA-2 = MSH-10 of the message it answers): AA, or AE/AR with MSA-3 text and ERR.
    `version` (MSH-12) is the version of the message answered, when it was read."""
    stamp = now.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")
    code = error.ack if error else "AA"
    segments = [
        f"MSH|^~\\&|{receiving[0]}|{receiving[1]}|||{stamp}||ACK^{trigger}^ACK|ACK-{control_id or 'UNKNOWN'}|P|{version}",
        f"MSA|{code}|{control_id or ''}" + (f"|{escape(error.text)[:80]}" if error else ""),
    ]
    if error:
        location = f"{error.segment}^1^{error.field_no or ''}^{error.code}&{escape(error.text)[:60]}&HL70357"
        segments.append(f"ERR|{location}")
    return ("\r".join(segments) + "\r").encode()
