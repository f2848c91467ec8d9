"""Where a delivery goes (the routing file, IAP_ROUTING_FILE) and by which transport.

Organisation recipients: a FHIR endpoint for the ODS code -> FHIR push; a MESH mailbox for it ->
MESH; otherwise, for the patient's own GP practice, MESH automatic routing
`GPPROVIDER_<NHS number>_<date of birth>_<SURNAME>` (date format configurable). The patient's copy
goes to the print folder. No route is a reason, not a crash: the delivery is dead-lettered with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fhir_mapping.letters.document import nhs_number

__all__ = ["Routing", "Route", "NoRoute", "load_routing", "resolve", "gpprovider_address"]

_ODS = r"^[A-Z0-9]{3,10}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Sender(_Strict):
    ods: str = Field(pattern=_ODS)
    name: str = Field(min_length=2)


class GpProvider(_Strict):
    enabled: bool
    dob_format: Literal["%Y%m%d", "%d%m%Y"]


class Routing(_Strict):
    schema_: Literal["delivery-routing/1"] = Field(alias="schema")
    version: str
    sender: Sender
    gpprovider: GpProvider
    mesh_mailboxes: dict[str, str] = Field(default_factory=dict)
    fhir_endpoints: dict[str, str] = Field(default_factory=dict)

    @field_validator("mesh_mailboxes", "fhir_endpoints")
    @classmethod
    def _ods_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not re.match(_ODS, key):
                raise ValueError(f"{key!r} is not an ODS code")
        return value

    @field_validator("fhir_endpoints")
    @classmethod
    def _urls(cls, value: dict[str, str]) -> dict[str, str]:
        for key, url in value.items():
            if not url.startswith(("https://", "http://")):
                raise ValueError(f"{key}: {url!r} is not an http(s) URL")
        return value


def load_routing(path: Path) -> Routing:
    """The routing file, or ValueError naming the file and the field (the gateway refuses to start)."""
    try:
        return Routing.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read the routing file: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ValueError(f"{path}: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None


@dataclass(frozen=True)
class Route:
    transport: Literal["mesh", "fhir", "print", "mllp", "email"]  # mllp: notes to an EPR (gateway.letters.outbox.epr)
    address: str


@dataclass(frozen=True)
class NoRoute:
    reason: str


def gpprovider_address(patient: dict[str, Any], dob_format: str) -> str | None:
    """MESH automatic routing address for the patient's registered practice, or None when a part is missing."""
    number = nhs_number(patient)
    name: dict[str, Any] = next(iter(patient.get("name") or []), {})
    family = str(name.get("family") or "")
    surname = re.sub(r"[^A-Z]", "", family.upper())
    if not number or not patient.get("birthDate") or not surname:
        return None
    born = date.fromisoformat(patient["birthDate"]).strftime(dob_format)
    return f"GPPROVIDER_{number}_{born}_{surname}"


def resolve(routing: Routing, recipient_kind: str, recipient: str, patient: dict[str, Any], print_dir: Path | None) -> Route | NoRoute:
    if recipient_kind == "patient":
        return (
            Route("print", str(print_dir)) if print_dir else NoRoute("no print folder is configured (IAP_PRINT_DIR) for the client's copy")
        )
    if recipient in routing.fhir_endpoints:
        return Route("fhir", routing.fhir_endpoints[recipient])
    if recipient in routing.mesh_mailboxes:
        return Route("mesh", routing.mesh_mailboxes[recipient])
    if recipient_kind == "gp" and routing.gpprovider.enabled:
        address = gpprovider_address(patient, routing.gpprovider.dob_format)
        if address:
            return Route("mesh", address)
        return NoRoute("MESH automatic routing needs the patient's NHS number, date of birth and surname")
    return NoRoute(
        f"no MESH mailbox or FHIR endpoint for ODS {recipient} in the routing file"
        + ("" if recipient_kind != "gp" else "; automatic routing is off")
    )
