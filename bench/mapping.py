"""Mapping throughput per source, one process on one core: no database, no HTTP.

Every source the gateway maps on its own, each the way the gateway maps it, offline:
* NHS 111 flat case JSON, BaRS message Bundles and MHPL calls: `gateway.cas.intake.map_offline` (adapter
  parse and validation, intake rules, FHIR mapping, the collection Bundle).
* RiO HL7 v2: ADT (A04 register, A31 update), and notes, documents and referrals (ORU^R01, MDM^T02,
  REF^I12): `gateway.epr.hl7_intake.map_hl7_offline` (ER7 parse and checks, the UK Core Patient and the
  message's resources, the Bundle) against an empty store.
* PCMIS and SystmOne contacts, a one-row CSV batch each: the adapter's CSV parse, then the row's
  resources as the batch intake builds them (`gateway.epr.contact_batches.map_row_offline`: Encounter,
  measures checked and scored, consents or care plans) against an empty store, in a Bundle.
* Outcome measures (QuestionnaireResponse, PHQ-9 and GAD-7): `gateway.measures.responses.score_offline`
  (checked against the Questionnaire, scored, Observations, risk items acted on).

Not here: pathway referrals and CLEO updates. Routing a pathway referral reads the patient's stored
measures and care plans, and a CLEO update changes a stored case: both are decisions over the
store, measured by the ingest part of the benchmark's kind, not by mapping alone.

N inputs are built up front from the fixtures, each with its own message id (so none is a
copy of another), warmed up, then mapped one by one. The figures: messages per second of wall
time and per second of this process's CPU time (the second is steadier on a shared machine).
"""

from __future__ import annotations

import json
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
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
    return _hl7(["adt-*.hl7"], n)


def _hl7(patterns: list[str], n: int) -> list[bytes]:
    templates = [raw for pattern in patterns for raw in _fixtures("rio", pattern)]
    out = []
    for i in range(n):
        segments = templates[i % len(templates)].replace(b"\r\n", b"\r").replace(b"\n", b"\r").split(b"\r")
        msh = segments[0].split(b"|")
        msh[9] = f"BENCH-{i:08d}".encode()
        out.append(b"\r".join([b"|".join(msh), *segments[1:]]))
    return out


def mhpl_calls(n: int) -> list[bytes]:
    templates = [json.loads(raw) for raw in _fixtures("mhpl", "*.mhpl.json")]
    return [json.dumps(templates[i % len(templates)] | {"call_id": f"BENCH-MHPL-{i:08d}"}).encode() for i in range(n)]


def hl7_notes(n: int) -> list[bytes]:
    """ORU^R01 progress notes, MDM^T02 documents and REF^I12 referrals with their own control ids (MSH-10)."""
    return _hl7(["oru-*.hl7", "mdm-*.hl7", "ref-*.hl7"], n)


def pcmis_rows(n: int) -> list[bytes]:
    from adapters.pcmis import parse_pcmis_csv

    return _csv_rows("pcmis", parse_pcmis_csv, n)


def systmone_rows(n: int) -> list[bytes]:
    from adapters.systmone import parse_systmone_csv

    return _csv_rows("systmone", parse_systmone_csv, n)


def measure_responses(n: int) -> list[bytes]:
    """Each with its own identifier (so its own QuestionnaireResponse id)."""
    templates = [json.loads(raw) for raw in _fixtures("measures", "*.qr.json")]
    out = []
    for i in range(n):
        qr = templates[i % len(templates)] | {"identifier": {"system": "https://example.org/bench-qr", "value": f"BENCH-QR-{i:08d}"}}
        out.append(json.dumps(qr).encode())
    return out


def _csv_rows(folder: str, parse: Callable[[bytes], Sequence[Any]], n: int) -> list[bytes]:
    """One-row batches (the header and one contact), cycling through the fixture's accepted rows (a fixture also
    holds rows made to be refused), each contact with its own id."""
    lines = _fixtures(folder, "*.csv")[0].decode().splitlines()
    header = lines[0]
    if not header.startswith("contact_id,"):
        raise SystemExit(f"fixtures/{folder}: the first column is not contact_id")
    rows = [line.split(",", 1)[1] for line in lines[1:] if line.strip() and parse(f"{header}\n{line}\n".encode())[0].contact is not None]
    if not rows:
        raise SystemExit(f"fixtures/{folder}: no row is accepted")
    return [f"{header}\nBENCH-{folder.upper()}-{i:08d},{rows[i % len(rows)]}\n".encode() for i in range(n)]


def sources() -> list[tuple[str, Callable[[int], list[bytes]], Callable[[bytes], dict[str, Any]]]]:
    from adapters.pcmis import parse_pcmis_csv
    from adapters.systmone import parse_systmone_csv
    from fhir_mapping.measures import load_measures
    from gateway.cas.intake import CHANNEL_MHPL, map_offline
    from gateway.cas.rules.schema import load_rules
    from gateway.epr.contact_batches import build_pcmis, build_systmone
    from gateway.epr.hl7_intake import map_hl7_offline
    from gateway.measures.responses import score_offline

    registry = load_rules()
    catalogue = load_measures()
    return [
        ("NHS 111 flat case JSON", flat_cases, lambda raw: map_offline(raw, registry, RECEIVED_AT)),
        ("BaRS message Bundle", bars_bundles, lambda raw: map_offline(raw, registry, RECEIVED_AT)),
        ("MHPL call", mhpl_calls, lambda raw: map_offline(raw, registry, RECEIVED_AT, CHANNEL_MHPL)),
        ("HL7 v2 ADT (RiO)", hl7_adts, lambda raw: map_hl7_offline(raw, RECEIVED_AT)),
        ("HL7 v2 ORU/MDM/REF (RiO)", hl7_notes, lambda raw: map_hl7_offline(raw, RECEIVED_AT)),
        ("PCMIS contact (CSV row)", pcmis_rows, lambda raw: _rows_bundle(parse_pcmis_csv(raw), build_pcmis, catalogue)),
        ("SystmOne contact (CSV row)", systmone_rows, lambda raw: _rows_bundle(parse_systmone_csv(raw), build_systmone, catalogue)),
        ("Outcome measure (QuestionnaireResponse)", measure_responses, lambda raw: score_offline(raw, catalogue, RECEIVED_AT)),
    ]


def _rows_bundle(rows: Sequence[Any], build: Any, catalogue: Any) -> dict[str, Any]:
    """The batch's rows mapped as the batch intake maps them, in a collection Bundle; a refused row is an error."""
    from common.datetimes import to_fhir_instant
    from fhir_mapping.bundles import bundle_of
    from fhir_mapping.ids import resource_id
    from gateway.epr.contact_batches import map_row_offline

    resources = []
    for row in rows:
        if row.contact is None:
            raise ValueError(f"row {row.number} refused: {[p.message for p in row.problems]}")
        resources += map_row_offline(build, catalogue, row.contact, RECEIVED_AT)
    return bundle_of(resources, "collection", resource_id("Bundle", "bench-rows", rows[0].contact_id or ""), to_fhir_instant(RECEIVED_AT))


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
