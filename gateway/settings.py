"""One Settings object (pydantic-settings): environment variables, safe defaults for local use only."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.rules.pathway_schema import DEFAULT_PATHWAYS_DIR
from gateway.rules.schema import DEFAULT_RULES_DIR

__all__ = ["Settings"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IAP_", extra="ignore")

    environment: Literal["local", "test", "production"] = "local"
    # DATABASE_URL (no prefix, the usual name): SQLite file by default; postgresql://... for several instances
    database_url: str = Field(default="sqlite:///./iap-gateway.db", validation_alias="DATABASE_URL")
    rules_dir: Path = DEFAULT_RULES_DIR
    pathways_dir: Path = DEFAULT_PATHWAYS_DIR  # PC and TT pathway rule files (schema pathway/1)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    tick_seconds: int = Field(default=60, ge=0)  # safety-call worker interval; 0 = off (run `iap-gateway tick` instead)
    mllp_host: str = "127.0.0.1"
    mllp_port: int = Field(default=2575, ge=0, le=65535)  # HL7 v2 over MLLP (RiO); 0 = off
    log_json: bool = True
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _no_unsafe_defaults(self) -> Settings:
        if (
            self.environment == "production"
            and "DATABASE_URL" not in self.model_fields_set
            and self.database_url.startswith("sqlite:///./")
        ):
            raise ValueError("IAP_ENVIRONMENT=production needs an explicit DATABASE_URL (refusing the local SQLite default)")
        return self
