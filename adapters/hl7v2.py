"""RiO over HL7 v2.4: MLLP framing, and ER7 bytes -> a typed `Hl7Message` (parsed with hl7apy).

Messages taken: ADT^A04/A08/A28/A31 (register/update patient), REF^I12 (referral),
ORU^R01 and MDM^T02 (progress notes / documents). Format: docs/formats/rio-hl7v2.md.
Problems become `Hl7Error`s that carry what an ACK needs: AR (the message cannot be
taken: framing, MSH, version, type) or AE (an error in its content), the segment and
field, an HL7 table 0357 error code, and text for MSA-3. No FHIR, no database here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone

from hl7apy import load_library
from hl7apy.parser import parse_message

from adapters.referral import Demographics, check_nhs_number

__all__ = ["Hl7Error", "Hl7Header", "Hl7Note", "Hl7Referral", "Hl7Message", "MllpFramer", "frame", "parse_hl7", "build_ack", "SUPPORTED"]

MLLP_START, MLLP_END = b"\x0b", b"\x1c\x0d"
SUPPORTED = {("ADT", "A04"), ("ADT", "A08"), ("ADT", "A28"), ("ADT", "A31"), ("REF", "I12"), ("ORU", "R01"), ("MDM", "T02")}
REQUIRED_SEGMENTS = {"ADT": ("EVN", "PID"), "REF": ("RF1", "PID"), "ORU": ("PID", "OBR", "OBX"), "MDM": ("EVN", "PID", "TXA", "OBX")}
# every segment hl7apy's v2.4 library defines: a message made only of these and Z-segments is one hl7apy parses
_V24_SEGMENTS = frozenset(load_library("2.4").SEGMENTS)
_TS = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.\d+)?([+-]\d{4})?$")


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
    unused_segments: tuple[str, ...] = field(default=())


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


def parse_hl7(raw: bytes) -> Hl7Message:
    """Parse one ER7 message; raises Hl7Error naming what is wrong."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # HL7 v2 default character set is often 8859/1
    text = text.replace("\r\n", "\r").replace("\n", "\r").strip("\r")
    if not text.startswith("MSH"):
        raise Hl7Error("AR", "message does not start with an MSH segment", "MSH", None, 100)
    control_id = _field(text.split("\r", 1)[0], 10)
    if len(text) < 8 or text[3:8] != "|^~\\&":
        raise Hl7Error("AR", "MSH-1/MSH-2: field separator and encoding characters must be |^~\\&", "MSH", 2, 102, control_id)
    msh = text.split("\r", 1)[0]
    msg_type = _field(msh, 9)
    version = _field(msh, 12)
    if not control_id:
        raise Hl7Error("AR", "MSH-10 message control id is required", "MSH", 10, 101)
    if not msg_type:
        raise Hl7Error("AR", "MSH-9 message type is required", "MSH", 9, 101, control_id)
    if version.split("^")[0] != "2.4":
        raise Hl7Error("AR", f"MSH-12 version {version[:10]!r} is not supported (2.4)", "MSH", 12, 203, control_id)
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
    if not _plain_segments(segments):
        try:
            parse_message("\r".join(segments), find_groups=False)
        except Exception as exc:  # hl7apy raises many types for malformed ER7; all mean "cannot parse"
            raise Hl7Error("AR", f"cannot parse the message: {type(exc).__name__}", "MSH", None, 102, control_id) from None
    header = Hl7Header(
        control_id=control_id,
        message_type=kind,
        trigger=trigger,
        sending_application=_field(msh, 3).split("^")[0],
        sending_facility=_field(msh, 4).split("^")[0],
        version="2.4",
        sent_at=_timestamp(_field(msh, 7), "MSH", 7, control_id, required=False),
    )
    pid = _segment(segments, "PID")
    patient = _patient(pid, control_id)
    pd1 = _segment(segments, "PD1")
    gp = _component(_field(pd1, 3), 3) if pd1 else None
    notes: tuple[Hl7Note, ...] = ()
    referral = None
    if kind == "ORU":
        notes = _oru_notes(segments, control_id)
    elif kind == "MDM":
        notes = _mdm_notes(segments, control_id)
    elif kind == "REF":
        referral = _referral(segments, control_id)
    known = {"MSH", "EVN", "PID", "PD1", "PV1", "RF1", "PRD", "OBR", "OBX", "TXA", "NTE"}
    unused = tuple(sorted({n for n in names if n not in known}))
    return Hl7Message(header, patient, gp or None, notes, referral, unused)


def _plain_segments(segments: list[str]) -> bool:
    """Whether hl7apy is sure to parse these segments, so its parse (~3 ms, most of an ADT's cost) can be skipped.

    Fields are read positionally here (RiO sends no groups); hl7apy is run only for the structure
    check, and in its default (tolerant) mode, for a message whose MSH passed the checks above,
    it refuses only a segment whose name it does not know. A message whose every segment starts
    with a v2.4 segment name hl7apy knows, or a Z-segment name, then `|` (or ends) is one it
    parses; anything else still goes through hl7apy. tests/test_hl7v2.py checks this against
    hl7apy itself on generated messages.
    """
    for segment in segments:
        name = segment[:3]
        if not (name in _V24_SEGMENTS or (len(name) == 3 and name[0] == "Z")) or segment[3:4] not in ("|", ""):
            return False
    return True


def _segment(segments: list[str], name: str) -> str:
    return next((s for s in segments if s.startswith(name + "|")), "")


def _field(segment: str, index: int) -> str:
    """Field n of a segment (MSH counts MSH-1 as the separator itself, as the standard does)."""
    parts = segment.split("|")
    position = index - 1 if segment.startswith("MSH") else index
    return parts[position] if 0 <= position < len(parts) else ""


def _component(value: str, index: int) -> str:
    parts = value.split("^")
    return parts[index - 1] if len(parts) >= index else ""


def _timestamp(value: str, segment: str, field_no: int, control_id: str, required: bool = True) -> datetime | None:
    """HL7 TS: YYYYMMDD[HHMM[SS]][+ZZZZ]. A time without an offset is refused (never the host zone)."""
    if not value:
        if required:
            raise Hl7Error("AE", f"{segment}-{field_no} is required", segment, field_no, 101, control_id)
        return None
    match = _TS.match(value.split("^")[0])
    if not match:
        raise Hl7Error("AE", f"{segment}-{field_no} is not an HL7 timestamp", segment, field_no, 102, control_id)
    year, month, day, hour, minute, second, offset = match.groups()
    if hour and not offset:
        raise Hl7Error("AE", f"{segment}-{field_no} has a time but no UTC offset (+ZZZZ)", segment, field_no, 102, control_id)
    try:
        zone = timezone(timedelta(hours=int(offset[:3]), minutes=int(offset[0] + offset[3:]))) if offset else UTC
        return datetime(
            int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0), int(second or 0), tzinfo=zone
        ).astimezone(UTC)
    except ValueError:
        raise Hl7Error("AE", f"{segment}-{field_no} is not a real date/time", segment, field_no, 102, control_id) from None


def _patient(pid: str, control_id: str) -> Demographics:
    identifiers = _field(pid, 3).split("~")
    nhs_raw = next((_component(i, 1) for i in identifiers if _component(i, 4) == "NHS" or _component(i, 5) == "NH"), None)
    if not nhs_raw:
        raise Hl7Error("AE", "PID-3 needs the NHS number (CX.4 NHS or CX.5 NH)", "PID", 3, 101, control_id)
    nhs, reason = check_nhs_number(nhs_raw)
    if reason:
        raise Hl7Error("AE", f"PID-3: {reason}", "PID", 3, 102, control_id)
    name = _field(pid, 5).split("~")[0]
    birth = _field(pid, 7)
    born = _timestamp(birth, "PID", 7, control_id, required=False) if birth else None
    sex = {"M": "male", "F": "female", "O": "other", "U": "unknown"}.get(_field(pid, 8))
    address = _field(pid, 11).split("~")[0]
    return Demographics(
        nhs_number=nhs or "",
        family=_component(name, 1) or None,
        given=tuple(g for g in (_component(name, 2), _component(name, 3)) if g),
        prefix=tuple(p for p in (_component(name, 5),) if p),
        birth_date=born.date() if born else None,
        gender=sex,
        address_lines=tuple(a for a in (_component(address, 1), _component(address, 2)) if a),
        city=_component(address, 3) or None,
        postcode=_component(address, 5) or None,
        phone=_component(_field(pid, 13), 1) or None,
    )


def _oru_notes(segments: list[str], control_id: str) -> tuple[Hl7Note, ...]:
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
                text=_unescape(text),
                title=title,
                author=_component(_field(obx, 16), 2) or _component(_field(obr, 32), 1) or None,
                written_at=_timestamp(_field(obx, 14) or _field(obr, 7), "OBX", 14, control_id, required=False),
            )
        )
    return tuple(notes)


def _mdm_notes(segments: list[str], control_id: str) -> tuple[Hl7Note, ...]:
    txa = _segment(segments, "TXA")
    document_id = _component(_field(txa, 12), 1) or control_id
    text = "\n".join(_unescape(_field(obx, 5).replace("~", "\n")) for obx in segments if obx.startswith("OBX|"))
    if not text.strip():
        raise Hl7Error("AE", "OBX-5 document text is empty", "OBX", 5, 101, control_id)
    return (
        Hl7Note(
            note_id=document_id,
            text=text,
            title=_component(_field(txa, 2), 2) or _field(txa, 2) or "RiO document",
            author=_component(_field(txa, 9), 2) or _component(_field(txa, 9), 1) or None,
            written_at=_timestamp(_field(txa, 4) or _field(txa, 6), "TXA", 4, control_id, required=False),
        ),
    )


def _referral(segments: list[str], control_id: str) -> Hl7Referral:
    rf1 = _segment(segments, "RF1")
    referral_id = _component(_field(rf1, 6), 1)
    if not referral_id:
        raise Hl7Error("AE", "RF1-6 originating referral identifier is required", "RF1", 6, 101, control_id)
    prd = _segment(segments, "PRD")
    return Hl7Referral(
        referral_id=referral_id,
        reason=_component(_field(rf1, 10), 2) or _component(_field(rf1, 10), 1) or None,
        referred_by=" ".join(p for p in (_component(_field(prd, 2), 2), _component(_field(prd, 2), 1)) if p) or None,
        referred_at=_timestamp(_field(rf1, 7), "RF1", 7, control_id, required=False),
    )


def _unescape(text: str) -> str:
    for escape, char in (("\\F\\", "|"), ("\\S\\", "^"), ("\\R\\", "~"), ("\\T\\", "&"), ("\\E\\", "\\"), ("\\.br\\", "\n")):
        text = text.replace(escape, char)
    return text


def build_ack(
    control_id: str | None, trigger: str, error: Hl7Error | None, now: datetime, receiving: tuple[str, str] = ("IAPGW", "IAP")
) -> bytes:
    """An ACK for `control_id` (MSA-2 = MSH-10 of the message it answers): AA, or AE/AR with MSA-3 text and ERR."""
    stamp = now.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")
    code = error.ack if error else "AA"
    segments = [
        f"MSH|^~\\&|{receiving[0]}|{receiving[1]}|||{stamp}||ACK^{trigger}^ACK|ACK-{control_id or 'UNKNOWN'}|P|2.4",
        f"MSA|{code}|{control_id or ''}" + (f"|{_escape(error.text)[:80]}" if error else ""),
    ]
    if error:
        location = f"{error.segment}^1^{error.field_no or ''}^{error.code}&{_escape(error.text)[:60]}&HL70357"
        segments.append(f"ERR|{location}")
    return ("\r".join(segments) + "\r").encode()


def _escape(text: str) -> str:
    for char, escape in (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("~", "\\R\\"), ("&", "\\T\\")):
        text = text.replace(char, escape)
    return text
