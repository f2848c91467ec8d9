"""The letter-type table (letter-types.yaml): schema-checked at load, one entry per letter type."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["SnomedConcept", "LetterType", "LetterTypes", "letter_types", "LETTER_TYPE_SYSTEM", "TEMPLATES_DIR"]

LETTER_TYPE_SYSTEM = "https://fhir.iap-gateway.org/CodeSystem/letter-type"
TABLE = Path(__file__).parent / "letter-types.yaml"
TEMPLATES_DIR = Path(__file__).parent / "templates"


class SnomedConcept(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str = Field(pattern=r"^\d{6,18}$")
    display: str


class LetterType(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str = ""
    title: str = Field(min_length=3)
    composition_title: str | None = None  # the Composition.title a receiver files it by (GPCM-SD-118); default `title`
    description: str = Field(min_length=3)
    rules: list[str] = Field(min_length=1)
    itk: Literal["send-document", "mh-edischarge"]
    composition_type: SnomedConcept  # Composition.type (SNOMED CT)
    local_extension: str | None = None
    workflow: str = Field(pattern=r"^[A-Z0-9_]{3,64}$")
    template: str
    gp_consent: bool = False  # TT-14: a GP copy is withheld when the client asked that the GP not be contacted
    client_copy: bool = False  # TT-14: the client may be sent a copy (TT-15 consent checked at send time)
    latest_scores: list[str] = Field(default_factory=list)  # "system|code" of score Observations always reported (latest)


class LetterTypes(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_: Literal["letter-types/1"] = Field(alias="schema")
    version: str
    types: dict[str, LetterType]


@cache
def letter_types() -> dict[str, LetterType]:
    """The table, each entry knowing its own code; a bad table stops the gateway at start-up, naming the field."""
    try:
        table = LetterTypes.model_validate(yaml.safe_load(TABLE.read_text(encoding="utf-8")))
    except ValidationError as exc:
        raise ValueError(f"{TABLE.name}: {exc}") from None
    for code, entry in table.types.items():
        if not (TEMPLATES_DIR / "types" / entry.template).is_file():
            raise ValueError(f"{TABLE.name}: types.{code}.template: no template file {entry.template}")
    return {code: entry.model_copy(update={"code": code}) for code, entry in table.types.items()}
