"""Mapping throughput per source, one process on one core: no database, no HTTP.

* NHS 111 flat case JSON and BaRS message Bundles: `gateway.intake.map_offline` (adapter parse and
  validation, intake rules, FHIR mapping, the collection Bundle).
* RiO HL7 v2 ADT (A04 register, A31 update): `gateway.hl7_intake.map_hl7_offline` (ER7 parse and
  checks, the UK Core Patient, the Bundle) against an empty store.

N inputs are built up front from the fixtures, each with its own message id (so none is a
copy of another), warmed up, then mapped one by one. The figures: messages per second of wall
time and per second of this process's CPU time (the second is steadier on a shared machine).
"""

from __future__ import annotations

import json
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RECEIVED_AT = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@dataclass
class MappingResult:
    source: str
    n: int
    seconds: float
    cpu_seconds: float
    p50_ms: float
    p99_ms: float
    errors: list[str]

    @property
    def rate(self) -> float:
        return self.n / self.seconds

    @property
    def cpu_rate(self) -> float:
        return self.n / self.cpu_seconds


def _fixtures(folder: str, pattern: str) -> list[bytes]:
    paths = [p for p in sorted((REPO / "fixtures" / folder).glob(pattern)) if not p.name.endswith(".expected.json")]
    if not paths:
        raise SystemExit(f"no fixtures fixtures/{folder}/{pattern}")
    return [p.read_bytes() for p in paths]


def flat_cases(n: int) -> list[bytes]:
    templates = [json.loads(raw) for raw in _fixtures("nhs111", "*.case.json")]
    return [json.dumps(templates[i % len(templates)] | {"case_id": f"BENCH-MAP-{i:08d}"}).encode() for i in range(n)]


def bars_bundles(n: int) -> list[bytes]:
    """Each with its own Bundle.id and MessageHeader fullUrl (references to the header rewritten too)."""
    out = []
    templates = [raw.decode() for raw in _fixtures("nhs111", "*.bundle.json")]
    for i in range(n):
        text = templates[i % len(templates)]
        header_url = next(e["fullUrl"] for e in json.loads(text)["entry"] if e["resource"]["resourceType"] == "MessageHeader")
        doc = json.loads(text.replace(header_url, f"urn:uuid:{uuid.UUID(int=i)}"))
        doc["id"] = str(uuid.UUID(int=10**12 + i))
        out.append(json.dumps(doc).encode())
    return out


def hl7_adts(n: int) -> list[bytes]:
    """ADT^A04 and ^A31 with their own control ids (MSH-10)."""
    templates = _fixtures("rio", "adt-*.hl7")
    out = []
    for i in range(n):
        segments = templates[i % len(templates)].replace(b"\r\n", b"\r").replace(b"\n", b"\r").split(b"\r")
        msh = segments[0].split(b"|")
        msh[9] = f"BENCH-{i:08d}".encode()
        out.append(b"\r".join([b"|".join(msh), *segments[1:]]))
    return out


def sources() -> list[tuple[str, Callable[[int], list[bytes]], Callable[[bytes], dict[str, Any]]]]:
    from gateway.hl7_intake import map_hl7_offline
    from gateway.intake import map_offline
    from gateway.rules.schema import load_rules

    registry = load_rules()
    return [
        ("NHS 111 flat case JSON", flat_cases, lambda raw: map_offline(raw, registry, RECEIVED_AT)),
        ("BaRS message Bundle", bars_bundles, lambda raw: map_offline(raw, registry, RECEIVED_AT)),
        ("HL7 v2 ADT (RiO)", hl7_adts, lambda raw: map_hl7_offline(raw, RECEIVED_AT)),
    ]


def run(n: int, warmup: int) -> list[MappingResult]:
    return [_run_source(label, make(n + warmup), map_one, warmup) for label, make, map_one in sources()]


def _run_source(label: str, inputs: list[bytes], map_one: Callable[[bytes], dict[str, Any]], warmup: int) -> MappingResult:
    errors: list[str] = []

    def attempt(raw: bytes) -> None:
        try:
            bundle = map_one(raw)
            if bundle.get("resourceType") != "Bundle" or not bundle.get("entry"):
                errors.append("mapped to something other than a non-empty Bundle")
        except Exception as exc:  # noqa: BLE001 - the benchmark counts and reports every failure
            errors.append(f"{type(exc).__name__}: {exc}")

    for raw in inputs[:warmup]:
        attempt(raw)
    timed = inputs[warmup:]
    times = []
    start, cpu = time.perf_counter(), time.process_time()
    for raw in timed:
        t = time.perf_counter()
        attempt(raw)
        times.append(time.perf_counter() - t)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    return MappingResult(label, len(timed), seconds, max(cpu_seconds, 1e-9), 1000 * statistics.median(times), 1000 * p99, errors)
