"""A re-send is the same message id AND the same content; the same id with other content is the sender's error.

Answering every message whose id matched a stored one as a re-send lost a *different* message that reused an id
(a sender built from a template, a counter reset): it got the first message's reply and its content was dropped
unsaid (issue 31). So a message whose id matches a stored one is compared with the stored raw message:

- JSON (the flat NHS 111 case, an MHPL call, a BaRS Bundle): the parsed JSON written again canonically (keys
  sorted, no whitespace, ASCII escapes), so a sender that re-serialises the same message (key order, spacing,
  escapes, `1.50` for `1.5`) still re-sends it; any changed value makes it another message.
- HL7 v2 (ER7): the segments, with MSH-7 (the time of the message) left out and segment ends (CR, LF, CRLF, a
  trailing one) made alike: an engine that stamps a new send time on a retry still re-sends; any other change
  makes it another message.

The comparison runs only when an id matches (a re-send or a reuse), against the raw bytes the store keeps for
replay: a new message costs nothing more, and messages stored before this rule are compared alike (no digest
column to fill in, nothing to migrate). A reuse is refused by the channel (BaRS and the flat JSON 422 naming the
id, HL7 v2 AE naming MSH-10), nothing is stored, and it is counted (`iap_message_id_reuses_total{source}`) and
logged (`message.id_reused`) with the channel and the element only: no id, no content.
"""

from __future__ import annotations

import json
import re

import structlog

from adapters.problems import GatewayInputError, Kind, Problem
from gateway.platform.metrics import MESSAGE_ID_REUSES

__all__ = ["same_json", "same_hl7", "id_reused", "refuse_reuse"]

log = structlog.get_logger("iap.messages")

# the channel (inbound_messages.channel) -> the source label iap_messages_total counts it under
_SOURCES = {"nhs111-case": "nhs111"}
_SEGMENT_END = re.compile(rb"\r\n|\r|\n")


def same_json(first: bytes, again: bytes) -> bool:
    """Whether `again` is `first` sent again: the same bytes, or the same JSON however it is spelt."""
    if first == again:
        return True
    canonical_first, canonical_again = _canonical_json(first), _canonical_json(again)
    return canonical_first is not None and canonical_first == canonical_again


def same_hl7(first: bytes, again: bytes) -> bool:
    """Whether `again` is `first` sent again: the same segments, whatever the time in MSH-7 and the segment ends."""
    return first == again or _canonical_hl7(first) == _canonical_hl7(again)


def id_reused(channel: str, element: str, original_seq: int) -> None:
    """Count and log a message that reuses a stored message's id with other content. The log names the stored
    message by our sequence number, never by its id."""
    MESSAGE_ID_REUSES.labels(source=_SOURCES.get(channel, channel)).inc()
    log.warning("message.id_reused", channel=channel, element=element, original_seq=original_seq)


def refuse_reuse(channel: str, element: str, original_seq: int) -> GatewayInputError:
    """`id_reused`, and the error to refuse the message with over HTTP: 422 naming `element`."""
    id_reused(channel, element, original_seq)
    text = (
        "this id was already used by a message with different content: a re-send must be that message unchanged, "
        "a new message needs a new id (nothing of this one was stored)"
    )
    return GatewayInputError(Problem(Kind.BUSINESS_RULE, element, text), stage="store")


def _canonical_json(raw: bytes) -> str | None:
    """The JSON in one spelling; None when it is not JSON (or nests too deep to read), so it matches nothing."""
    try:
        return json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    except (ValueError, RecursionError):
        return None


def _canonical_hl7(raw: bytes) -> bytes:
    segments = [segment for segment in _SEGMENT_END.split(raw) if segment.strip()]
    if segments and segments[0].startswith(b"MSH") and len(segments[0]) > 3:
        separator = segments[0][3:4]
        fields = segments[0].split(separator)
        if len(fields) > 6:
            fields[6] = b""  # MSH-7, the date/time of the message: a retry may stamp its own
        segments[0] = separator.join(fields)
    return b"\r".join(segments)
