"""HL7 v2 sender profiles: one small validated YAML file per sending system (`gateway/epr/rules/senders/*.yaml`).

A profile says how to read a sender (issue 32): the time zone of its offset-less times, the
FHIR identifier system of each local assigning authority in PID-3, where it puts the NHS number
and its verification status, which message types it may send; and, optional, where notes back to
it go (`destination`, section 2 of the issue). A message is matched to a profile by MSH-3/MSH-4
(or the MLLP peer); a sender with no profile gets `SenderProfile.default()`: Europe/London, the
NHS number in any usual placement, local identifiers under a system named for their assigning
authority, every supported message type, no destination. A bad file stops the start, naming the
file and field (as the rule files do, gateway.cas.rules.schema).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.cas.rules.schema import read_rule_file

__all__ = [
    "SenderProfile",
    "SenderMatch",
    "LocalIdentifier",
    "NhsNumberPlacement",
    "Destination",
    "SenderRegistry",
    "load_senders",
    "local_identifier_system",
    "DEFAULT_SENDERS_DIR",
    "UNKNOWN_SENDER",
    "NHS_OID",
]

DEFAULT_SENDERS_DIR = Path(__file__).parent / "senders"
NHS_OID = "2.16.840.1.113883.2.1.4.1"  # the NHS number's OID (NHS England ITK HL7 v2 specifications)
UNKNOWN_SENDER = "unknown-sender"  # the id of the defaults a sender with no profile gets
_LOCAL_BASE = "https://fhir.iap-gateway.org/Id/hl7v2-local"  # = codes.GATEWAY_BASE + /Id/hl7v2-local (no FHIR import here)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SenderMatch(_Strict):
    """Which messages are this sender's: MSH-3 and/or MSH-4 namespace ids (case-insensitive), or MLLP peers."""

    sending_application: list[str] = Field(default_factory=list)
    sending_facility: list[str] = Field(default_factory=list)
    peers: list[str] = Field(default_factory=list)  # addresses or networks, as IAP_MLLP_ALLOWED_PEERS

    @field_validator("peers")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for peer in value:
            ipaddress.ip_network(peer, strict=False)  # ValueError names the bad one
        return value

    @model_validator(mode="after")
    def _something(self) -> SenderMatch:
        if not (self.sending_application or self.sending_facility or self.peers):
            raise ValueError("give at least one of sending_application, sending_facility, peers")
        return self


class LocalIdentifier(_Strict):
    """A PID-3 assigning authority (CX.4 namespace id) and the FHIR identifier system its numbers are stored under."""

    assigning_authority: str = Field(min_length=1)
    system: str = Field(pattern=r"^(https?://|urn:oid:)\S+$")


class NhsNumberPlacement(_Strict):
    """Where the NHS number is in PID-3, and where its verification status (NHS Number Status Indicator 01-08) is.

    `any` reads every usual placement: CX.4 `NHS` (any case) or the NHS OID, CX.5 `NH` or `NHS`.
    """

    pid3: Literal["any", "authority", "type-code"] = "any"
    status_field: Literal["PID-32", "none"] = "PID-32"


class Destination(_Strict):
    """Where notes back to this sender go over MLLP (issue 32 section 2, CAS-13; docs/epr-notes.md).

    `timeout_seconds` bounds the connection and the wait for the ACK (no ACK by then: retried with backoff);
    `services`: the CAS services whose consultation notes go here (empty: every service's).
    """

    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    tls: bool = False
    ca_file: Path | None = None  # TLS: the CA bundle the receiver's certificate is checked against (None: the system's)
    timeout_seconds: float = Field(default=30, gt=0, le=600)
    note_message_type: Literal["MDM^T02", "ORU^R01"] = "MDM^T02"
    services: list[str] = Field(default_factory=list)


class SenderProfile(_Strict):
    id: str = Field(pattern=r"^[a-z0-9-]{2,40}$")
    name: str = Field(min_length=2)
    match: SenderMatch
    time_zone: str = "Europe/London"
    local_identifiers: list[LocalIdentifier] = Field(default_factory=list)
    nhs_number: NhsNumberPlacement = NhsNumberPlacement()
    message_types: list[str] | None = None  # e.g. ["ADT^A04", "MDM^T02"]; None = every type the gateway takes
    destination: Destination | None = None
    source: str = Field(default="local decision", min_length=3)  # where the values come from (an interface spec)

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone (e.g. Europe/London)") from None
        return value

    @field_validator("message_types")
    @classmethod
    def _types(cls, value: list[str] | None) -> list[str] | None:
        for kind in value or []:
            if len(kind.split("^")) != 2 or not all(kind.split("^")):
                raise ValueError(f"{kind!r}: write message types as TYPE^TRIGGER (ADT^A04)")
        return value

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    @property
    def service(self) -> SenderProfile:  # read_rule_file checks `<file>.service.id` against the file name
        return self

    def system_for(self, assigning_authority: str) -> str:
        """The identifier system of a local number from this sender (an unlisted authority gets a safe default)."""
        for local in self.local_identifiers:
            if local.assigning_authority.upper() == assigning_authority.upper():
                return local.system
        # an unknown sender's numbers are kept apart by its facility (MSH-4), so two trusts' numbers never collide
        sender = self.id if self.id != UNKNOWN_SENDER else f"facility-{self.match.sending_facility[0]}"
        return local_identifier_system(sender, assigning_authority)

    def may_send(self, message_type: str, trigger: str) -> bool:
        return self.message_types is None or f"{message_type}^{trigger}" in self.message_types

    @classmethod
    def default(cls, sending_facility: str = "") -> SenderProfile:
        """The safe defaults for a sender with no profile."""
        name = sending_facility or "unknown"
        return cls(id=UNKNOWN_SENDER, name=f"HL7 v2 sender {name[:40]}", match=SenderMatch(sending_facility=[name]))


def local_identifier_system(sender_id: str, assigning_authority: str) -> str:
    """A system for local numbers nobody configured: the sender and the authority, so two trusts' numbers never collide."""

    def safe(text: str) -> str:
        return "".join(c if c.isalnum() or c in "-._" else "-" for c in text)[:64]

    return f"{_LOCAL_BASE}/{safe(sender_id)}/{safe(assigning_authority or 'local')}"


class SenderRegistry:
    """Every sender profile; finds the one for a message by MSH-3/MSH-4, then by MLLP peer."""

    def __init__(self, profiles: list[SenderProfile]) -> None:
        self.profiles = {p.id: p for p in profiles}

    def for_message(self, sending_application: str, sending_facility: str, peer: str | None = None) -> SenderProfile:
        app, facility = sending_application.upper(), sending_facility.upper()
        for profile in self.profiles.values():
            apps = {a.upper() for a in profile.match.sending_application}
            facilities = {f.upper() for f in profile.match.sending_facility}
            if (apps or facilities) and (not apps or app in apps) and (not facilities or facility in facilities):
                return profile
        if peer:
            try:
                address = ipaddress.ip_address(peer)
            except ValueError:
                address = None
            for profile in self.profiles.values():
                if address is not None and any(address in ipaddress.ip_network(p, strict=False) for p in profile.match.peers):
                    return profile
        return SenderProfile.default(sending_facility)


def load_senders(directory: Path = DEFAULT_SENDERS_DIR) -> SenderRegistry:
    """Load and validate every `*.yaml` sender profile in `directory` (none is fine: every sender gets the defaults)."""
    profiles = [read_rule_file(path, SenderProfile.model_validate) for path in sorted(directory.glob("*.yaml"))]
    return SenderRegistry(profiles)
