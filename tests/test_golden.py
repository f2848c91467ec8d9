"""Golden fixture pairs: fixtures/nhs111/<case>.{case,bundle}.json -> fixtures/nhs111/expected/<case>.expected.json.

Regenerate after an intended mapping change with IAP_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.cas.intake import map_offline
from gateway.cas.rules.schema import load_rules
from tests.conftest import FIXTURES

RECEIVED_AT = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
INPUTS = sorted(FIXTURES.glob("*.json"))
EXPECTED = FIXTURES / "expected"


def expected_path(source: Path) -> Path:
    stem = source.name.removesuffix(".json").removesuffix(".case").removesuffix(".bundle")
    return EXPECTED / f"{stem}.expected.json"


def test_every_input_fixture_has_its_expected_pair() -> None:
    assert len(INPUTS) >= 8
    assert all(expected_path(p).exists() for p in INPUTS)
    pairs = {expected_path(p) for p in INPUTS}
    assert set(EXPECTED.glob("*.json")) == pairs


@pytest.mark.parametrize("source", INPUTS, ids=lambda p: p.name)
def test_fixture_maps_to_its_golden_bundle(source: Path) -> None:
    actual = map_offline(source.read_bytes(), load_rules(), RECEIVED_AT)
    golden = expected_path(source)
    text = json.dumps(actual, indent=2, ensure_ascii=False) + "\n"
    if os.environ.get("IAP_UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert actual == json.loads(golden.read_text())
    assert text == golden.read_text(), "same content, different bytes (element order): the mapping must write FHIR element order"


@pytest.mark.parametrize("source", INPUTS, ids=lambda p: p.name)
def test_mapping_is_deterministic_so_replays_map_to_the_same_ids(source: Path) -> None:
    first = map_offline(source.read_bytes(), load_rules(), RECEIVED_AT)
    again = map_offline(source.read_bytes(), load_rules(), RECEIVED_AT)
    assert [e["fullUrl"] for e in first["entry"]] == [e["fullUrl"] for e in again["entry"]]


def test_a_bundle_points_its_references_at_its_entries_and_leaves_the_resources_given_as_they_were() -> None:
    """fhir_mapping.bundles.bundle_of: Type/id references to entries become their urn:uuid fullUrls, at any depth;
    references to resources outside the Bundle stay; the resources passed in are not changed."""
    from fhir_mapping.bundles import bundle_of

    patient = {"resourceType": "Patient", "id": "11111111-1111-4111-8111-111111111111"}
    task = {
        "resourceType": "Task",
        "id": "22222222-2222-4222-8222-222222222222",
        "status": "requested",
        "for": {"reference": "Patient/11111111-1111-4111-8111-111111111111"},
        "owner": {"reference": "Organization/33333333-3333-4333-8333-333333333333"},
        "input": [{"type": {"text": "x"}, "valueReference": {"reference": "Patient/11111111-1111-4111-8111-111111111111"}}],
    }
    before = json.dumps([patient, task])
    bundle = bundle_of([patient, task], "collection", "b1")
    assert json.dumps([patient, task]) == before
    written = bundle["entry"][1]["resource"]
    assert written["for"] == {"reference": "urn:uuid:11111111-1111-4111-8111-111111111111"}
    assert written["input"][0]["valueReference"] == {"reference": "urn:uuid:11111111-1111-4111-8111-111111111111"}
    assert written["owner"] == task["owner"]
    assert list(written) == list(task)  # elements keep their order
    assert [e["fullUrl"] for e in bundle["entry"]] == [f"urn:uuid:{patient['id']}", f"urn:uuid:{task['id']}"]
