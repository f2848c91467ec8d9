"""HL7 v2 ER7 field reading shared by the parser: positions, escape sequences, TS times, character sets.

Escapes (HL7 v2.4 section 2.7): `\\F\\ \\S\\ \\T\\ \\R\\ \\E\\` are the delimiters, `\\.br\\` a line break, `\\Xhh..\\`
bytes in hex; `\\H\\`/`\\N\\` (highlighting) carry no text. `unescape` reads them in one pass left to right, so
`unescape(escape(text)) == text` for any text (tests/test_hl7v2_reading.py checks it by property).
"""

from __future__ import annotations

import re
from datetime import tzinfo

from common.datetimes import LONDON, Hl7Time, LocalTimeMissing, parse_hl7_time

__all__ = ["field", "component", "subcomponent", "escape", "unescape", "read_time", "decode", "TimeReading"]

_ESCAPE = re.compile(r"\\(F|S|T|R|E|H|N|\.br|\.sp\d*|X(?:[0-9A-Fa-f]{2})+)\\")
_DELIMITERS = {"F": "|", "S": "^", "T": "&", "R": "~", "E": "\\"}
_ESCAPES = {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\", "\n": "\\.br\\", "\r": "\\X0D\\"}
# MSH-18 character sets (HL7 table 0211) and the codec each is read with; an unnamed one is UTF-8, else 8859/1
_CHARSETS = {
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
    "8859/1": "latin-1",
    "8859/15": "iso8859-15",
    "ASCII": "ascii",
    "UNICODE": "utf-8",
}


def field(segment: str, index: int) -> str:
    """Field n of a segment (MSH counts MSH-1 as the separator itself, as the standard does)."""
    parts = segment.split("|")
    position = index - 1 if segment.startswith("MSH") else index
    return parts[position] if 0 <= position < len(parts) else ""


def component(value: str, index: int) -> str:
    parts = value.split("^")
    return parts[index - 1] if len(parts) >= index else ""


def subcomponent(value: str, index: int) -> str:
    parts = value.split("&")
    return parts[index - 1] if len(parts) >= index else ""


def unescape(text: str) -> str:
    """An ER7 value with its escape sequences decoded (one pass: an escaped `\\E\\` is never read again)."""
    if "\\" not in text:
        return text
    return _ESCAPE.sub(_decode_escape, text)


def _decode_escape(match: re.Match[str]) -> str:
    code = match.group(1)
    if code in _DELIMITERS:
        return _DELIMITERS[code]
    if code == ".br":
        return "\n"
    if code.startswith(".sp"):
        return "\n" * max(1, int(code[3:] or 1))
    if code in ("H", "N"):
        return ""  # highlighting on/off: formatting, no text
    raw = bytes.fromhex(code[1:])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def escape(text: str) -> str:
    """Text made safe for one ER7 field: delimiters, the escape character and line ends written as escapes."""
    return "".join(_ESCAPES.get(char, char) for char in text)


class TimeReading(Exception):
    """Why a TS could not be read: `missing` (required, absent), `invalid`, or `no-such-local-time` (spring change)."""

    def __init__(self, kind: str, text: str) -> None:
        super().__init__(text)
        self.kind = kind
        self.text = text


def read_time(value: str, local_zone: tzinfo = LONDON) -> Hl7Time:
    """An HL7 TS in a sender's zone (common.datetimes.parse_hl7_time); TimeReading says why not."""
    try:
        return parse_hl7_time(value, local_zone)
    except LocalTimeMissing as missing:
        raise TimeReading("no-such-local-time", str(missing)) from None
    except ValueError as invalid:
        raise TimeReading("invalid", str(invalid)) from None


def decode(raw: bytes) -> str:
    """The message's text, in the character set MSH-18 names (UTF-8 when none is named, 8859/1 if it is not UTF-8)."""
    header = raw.split(b"\r", 1)[0].split(b"\n", 1)[0]
    named = ""
    if header.startswith(b"MSH") and len(header) > 3:
        parts = header.split(header[3:4])
        named = parts[17].split(b"^")[0].decode("ascii", "replace").strip().upper() if len(parts) > 17 else ""
    codec = _CHARSETS.get(named)
    if codec and codec != "utf-8":
        return raw.decode(codec, "replace")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")  # HL7 v2's default character set is often 8859/1
