"""A consultation note (FHIR DocumentReference + Patient) -> the HL7 v2.4 message an EPR takes (CAS-13: notes to RiO).

Takes the stored note and its patient and returns ER7 bytes: MDM^T02 (TXA + one TX OBX per line of
the note) or ORU^R01 (OBR + one TX OBX), built segment by segment with hl7apy. The shape mirrors what
RiO sends the gateway (fixtures/rio/mdm-t02-document.hl7), so the gateway's own parser reads it back.
MSH-10 is the delivery's stable control id (`control_id_for`): every attempt of one delivery carries
the same MSH-10 and TXA-12/OBR-3 the note's id, so the receiver's duplicate detection can drop a copy.
Pure: no database, no network.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Field, Segment

from common import codes
from common.datetimes import parse_source_datetime

__all__ = ["NoteEnvelope", "build_note_message", "control_id_for", "escape_text", "note_text"]

LONDON = ZoneInfo("Europe/London")
VERSION = "2.4"  # RiO's version (adapters/hl7v2.py reads 2.4)
_ESCAPES = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("~", "\\R\\"), ("&", "\\T\\"))  # the escape character first


@dataclass(frozen=True)
class NoteEnvelope:
    """Who sends to whom, and in which message: from the destination's file (gateway/letters/outbox/epr.py)."""

    message: Literal["MDM^T02", "ORU^R01"]
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    local_identifier_system: str | None = None  # the EPR's own patient number, sent in PID-3 too when the Patient has one
    local_assigning_authority: str = "RIO"


def control_id_for(delivery_id: str) -> str:
    """MSH-10 for a delivery: 20 characters (HL7 v2.4 ST(20)), the same on every attempt and replay."""
    return "IAP" + delivery_id.replace("-", "").upper()[:17]


def escape_text(text: str) -> str:
    """Text for one ER7 field: HL7 escape sequences for the delimiters (the escape character itself first)."""
    for char, escape in _ESCAPES:
        text = text.replace(char, escape)
    return text


def note_text(note: dict[str, Any]) -> str:
    """The plain text of a stored note (its first attachment), line endings made `\\n`."""
    data = note["content"][0]["attachment"].get("data") or ""
    return base64.b64decode(data).decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")


def _ts(value: datetime) -> str:
    return value.astimezone(LONDON).strftime("%Y%m%d%H%M%S%z")  # UK local time with its offset


def _segment(name: str, fields: dict[int, str | list[str]]) -> str:
    """One segment from ER7 field values (components joined, text escaped by the caller); a list is a repeated field."""
    segment = Segment(name, version=VERSION, validation_level=VALIDATION_LEVEL.TOLERANT)
    for number, value in sorted(fields.items()):
        if isinstance(value, list):
            for repetition in value:
                field = Field(f"{name}_{number}", version=VERSION, validation_level=VALIDATION_LEVEL.TOLERANT)
                field.value = repetition
                segment.add(field)
        elif value:
            setattr(segment, f"{name.lower()}_{number}", value)
    return str(segment.to_er7())


def _pid(patient: dict[str, Any], envelope: NoteEnvelope) -> str:
    ids: list[str] = []
    for identifier in patient.get("identifier", []):
        value = escape_text(str(identifier.get("value") or ""))
        if identifier.get("system") == codes.NHS_NUMBER and value:
            ids.insert(0, f"{value}^^^NHS^NH")
        elif envelope.local_identifier_system and identifier.get("system") == envelope.local_identifier_system and value:
            ids.append(f"{value}^^^{escape_text(envelope.local_assigning_authority)}^PI")
    name: dict[str, Any] = next(iter(patient.get("name") or []), {})
    given = [escape_text(g) for g in name.get("given", [])[:2]]
    xpn = "^".join([escape_text(str(name.get("family") or "")), *given]).rstrip("^")
    sex = {"male": "M", "female": "F", "other": "O", "unknown": "U"}.get(str(patient.get("gender")), "")
    born = str(patient.get("birthDate") or "").replace("-", "")
    return _segment("PID", {1: "1", 3: "~".join(ids), 5: xpn, 7: born, 8: sex})


def _text_obx(values: list[str | list[str]], title: str, written: str, author: str) -> list[str]:
    return [
        _segment("OBX", {1: str(i), 2: "TX", 3: f"CN^{title}", 5: value, 11: "F", 14: written, 16: f"^{author}"})
        for i, value in enumerate(values, start=1)
    ]


def build_note_message(note: dict[str, Any], patient: dict[str, Any], envelope: NoteEnvelope, control_id: str, now: datetime) -> bytes:
    """The note as one ER7 message (segments ended by CR, UTF-8, MSH-18 saying so).

    Follows the HL7 v2.4 MDM^T02 (chapter 9) and ORU^R01 (chapter 7) structures, in the shape RiO
    itself sends (docs/formats/rio-hl7v2.md). An empty line of the note is an OBX with an empty
    OBX-5, so that the lines, and their order, arrive as written.
    """
    written = _ts(parse_source_datetime(note["date"]))
    author = escape_text(str((note.get("author") or [{}])[0].get("display") or ""))
    title = "CAS consultation notes"
    lines: list[str | list[str]] = [escape_text(line) for line in note_text(note).split("\n")]
    message_type = f"{envelope.message}^{envelope.message.replace('^', '_')}"
    msh = (
        f"MSH|^~\\&|{escape_text(envelope.sending_application)}|{escape_text(envelope.sending_facility)}|"
        f"{escape_text(envelope.receiving_application)}|{escape_text(envelope.receiving_facility)}|{_ts(now)}||"
        f"{message_type}|{control_id}|P|{VERSION}|||AL|NE||UNICODE UTF-8"
    )
    segments = [msh]
    document_id = escape_text(str(note["id"]))
    if envelope.message == "MDM^T02":
        segments += [
            _segment("EVN", {1: "T02", 2: _ts(now)}),
            _pid(patient, envelope),
            _segment("PV1", {1: "1", 2: "O"}),
            _segment("TXA", {1: "1", 2: f"CN^{title}", 3: "TX", 4: written, 9: f"^{author}", 12: document_id, 17: "AU"}),
        ]
    else:
        segments += [
            _pid(patient, envelope),
            _segment("OBR", {1: "1", 3: document_id, 4: f"CN^{title}", 7: written, 25: "F"}),
        ]
        lines = [[str(line) for line in lines]]  # ORU: one observation, the note's lines as repetitions of OBX-5 (one OBX is one note)
    segments += _text_obx(lines, title, written, author)
    return ("\r".join(segments) + "\r").encode("utf-8")
