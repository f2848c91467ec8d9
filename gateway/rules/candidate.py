"""A candidate rule file, checked exactly as start-up checks the live ones, and what it changes, value by value.

Start-up loads every file of a rules folder through its schema (gateway.cas.rules.schema.load_rules, pathway_schema.
load_pathways, sender_schema.load_senders) and refuses the first bad one with its name and every failing field. A
candidate is checked by that same loader, on a copy of the live folder with the candidate in place of the live file
of its service: the errors are start-up's own, including those only the whole folder shows (a DoS service id claimed
by two services, an `extends` base missing). Nothing live is touched.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel

from gateway.cas.rules.schema import RuleFileError, RuleRegistry, ServiceRules, load_rules
from gateway.epr.rules.sender_schema import SenderProfile, load_senders
from gateway.pathways.rules.schema import PrimaryCareRules, TalkingTherapiesRules, load_pathways
from gateway.platform.settings import Settings

__all__ = ["Candidate", "ValueChange", "RuleKind", "load_candidate", "check_candidate", "live_file", "flatten", "value_changes"]

RuleKind = Literal["cas-queue", "pathway", "sender"]
AnyRules = ServiceRules | PrimaryCareRules | TalkingTherapiesRules | SenderProfile


@dataclass(frozen=True)
class ValueChange:
    """One rule value the candidate changes: its dotted path (as the file writes it), live and candidate values.
    `live` None: the candidate adds it; `candidate` None: the candidate removes it."""

    path: str
    live: str | None
    candidate: str | None


@dataclass(frozen=True)
class Candidate:
    """A candidate that passed start-up's checks, beside the live version of the same service."""

    kind: RuleKind
    service_id: str
    source: Path  # the candidate file as given
    text: str  # its content, as read
    rules: AnyRules
    live: AnyRules | None  # None: a service the gateway does not run yet
    changes: tuple[ValueChange, ...]
    # every service's rules with the candidate in place (CAS: the registry intake routes by; others: unused)
    registry: RuleRegistry | None = None

    @property
    def version(self) -> str:
        return _version(self.rules)

    @property
    def live_version(self) -> str | None:
        return _version(self.live) if self.live is not None else None

    @property
    def label(self) -> str:
        return f"{self.service_id} {self.kind} {self.version}"


def _version(rules: AnyRules) -> str:
    return str(getattr(rules, "version", "") or "-")


def _kind_of(data: Any) -> RuleKind:
    """Which loader start-up would give this file to: by its `schema`, else a sender profile by its shape."""
    schema = data.get("schema") if isinstance(data, dict) else None
    if schema == "pathway/1" or (isinstance(data, dict) and "extends" in data):
        return "pathway"
    if schema is None and isinstance(data, dict) and ("match" in data or "local_identifiers" in data):
        return "sender"
    return "cas-queue"


def _folder(kind: RuleKind, settings: Settings) -> Path:
    return {"cas-queue": settings.rules_dir, "pathway": settings.pathways_dir, "sender": settings.senders_dir}[kind]


def _service_id(kind: RuleKind, data: Any, path: Path) -> str:
    """The service the candidate is for (as start-up names the file: its service id), else the file's own name."""
    if isinstance(data, dict):
        found = (
            data.get("id") if kind == "sender" else (data.get("service") or {}).get("id") if isinstance(data.get("service"), dict) else None
        )
        if isinstance(found, str) and found and "/" not in found and not found.startswith("."):
            return found
    return path.stem


def _load_all(kind: RuleKind, folder: Path) -> dict[str, AnyRules]:
    if kind == "cas-queue":
        return dict(load_rules(folder).services)
    if kind == "pathway":
        return dict(load_pathways(folder).services)
    return dict(load_senders(folder).profiles)


def live_file(kind: RuleKind, service_id: str, settings: Settings) -> Path:
    """Where the live rule file of `service_id` is (start-up reads it there)."""
    return _folder(kind, settings) / f"{service_id}.yaml"


def load_candidate(path: Path, settings: Settings | None = None) -> Candidate:
    """Check `path` as start-up would if it were live; RuleFileError with start-up's message when it is refused."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleFileError(f"{path.name}: cannot read: {exc}") from None
    return check_candidate(text, path, settings)


def check_candidate(text: str, source: Path, settings: Settings | None = None) -> Candidate:
    """`text` (a candidate's content, e.g. uploaded on a page; `source` names it) checked as start-up checks a live file."""
    settings = settings or Settings()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RuleFileError(f"{source.name}: cannot read: {exc}") from None
    kind = _kind_of(data)
    service_id = _service_id(kind, data, source)
    folder = _folder(kind, settings)
    with tempfile.TemporaryDirectory(prefix="iap-rules-check-") as scratch:
        copy = Path(scratch) / "rules"
        if folder.is_dir():
            shutil.copytree(folder, copy)
        else:
            copy.mkdir()
        (copy / f"{service_id}.yaml").write_text(text, encoding="utf-8")
        registry = load_rules(copy) if kind == "cas-queue" else None  # start-up's loader: its checks, its errors
        loaded = dict(registry.services) if registry is not None else _load_all(kind, copy)
    rules = loaded[service_id]
    live = _load_all(kind, folder).get(service_id) if folder.is_dir() else None
    return Candidate(kind, service_id, source, text, rules, live, tuple(value_changes(live, rules)), registry)


def flatten(rules: BaseModel | None) -> dict[str, str]:
    """Every value of a rule file by dotted path (durations as ISO 8601, as the files write them)."""
    if rules is None:
        return {}
    out: dict[str, str] = {}
    _walk(rules.model_dump(mode="json", by_alias=True), "", out.__setitem__)
    return out


def _walk(value: Any, prefix: str, put: Callable[[str, str], None]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _walk(item, f"{prefix}.{key}" if prefix else str(key), put)
    elif isinstance(value, list) and any(isinstance(item, dict | list) for item in value):
        for index, item in enumerate(value):
            _walk(item, f"{prefix}[{index}]", put)
    else:
        put(prefix, yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip())


def value_changes(live: BaseModel | None, candidate: BaseModel) -> list[ValueChange]:
    """What `candidate` changes against `live`, value by value, in path order."""
    before, after = flatten(live), flatten(candidate)
    return [
        ValueChange(path, before.get(path), after.get(path))
        for path in sorted(before.keys() | after.keys())
        if before.get(path) != after.get(path)
    ]
