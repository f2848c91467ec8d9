"""Property-based: every adapter, fed random and mutated input, refuses cleanly or parses: never another exception.
The JSON adapters are fed JSON built to break a reader too (tests/hostile.py: deep nesting, duplicate keys, extreme
numbers).

CI runs each adapter with CI_EXAMPLES; the nightly-style run (`pytest -m nightly`) runs NIGHTLY_EXAMPLES
per adapter (deselected by default: see `addopts` in pyproject.toml).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.bars import parse_bars_message
from adapters.cleo import parse_cleo_update
from adapters.hl7v2 import Hl7Error, parse_hl7
from adapters.mhpl import parse_mhpl_call
from adapters.nhs111_case import parse_nhs111_case
from adapters.pathway_referral import parse_pathway_referral
from adapters.pcmis import parse_pcmis_csv
from adapters.problems import GatewayInputError
from adapters.systmone import parse_systmone_csv
from tests.conftest import ROOT
from tests.hostile import hostile_json

CI_EXAMPLES = 150
NIGHTLY_EXAMPLES = 10_000
FIXTURES = ROOT / "fixtures"


def _refusal_is_clear(error: Exception) -> None:
    if isinstance(error, Hl7Error):  # HL7 v2 refuses with a NAK: AE/AR and a reason
        assert error.ack in ("AE", "AR") and error.text
        return
    assert isinstance(error, GatewayInputError)
    assert error.problems and all(p.element is not None and p.message for p in error.problems)


def _rows_are_clear(rows: Any) -> None:
    """CSV exports answer per row: each row either parsed or refused with its problems, never silently dropped."""
    for row in rows:
        assert row.contact is not None or (row.problems and all(p.message for p in row.problems))


SAMPLES: dict[str, tuple[Callable[[bytes], Any], list[Path]]] = {
    "nhs111": (parse_nhs111_case, sorted((FIXTURES / "nhs111").glob("*.case.json"))),
    "bars": (
        lambda raw: parse_bars_message(raw, str(uuid.UUID(int=1)), str(uuid.UUID(int=2))),
        sorted((FIXTURES / "nhs111").glob("*.bundle.json")),
    ),
    "mhpl": (parse_mhpl_call, sorted((FIXTURES / "mhpl").glob("*.json"))),
    "pathway": (parse_pathway_referral, sorted((FIXTURES / "pathways").glob("*.servicerequest.json"))),
    "cleo": (parse_cleo_update, sorted((FIXTURES / "cleo").glob("*.json"))),
    "hl7v2": (parse_hl7, sorted((FIXTURES / "rio").glob("*.hl7")) + sorted((FIXTURES / "uk-hl7v2").glob("*.hl7"))),
    "pcmis": (lambda raw: _rows_are_clear(parse_pcmis_csv(raw)), sorted((FIXTURES / "pcmis").glob("*.csv"))),
    "systmone": (lambda raw: _rows_are_clear(parse_systmone_csv(raw)), sorted((FIXTURES / "systmone").glob("*.csv"))),
}


def mutated(paths: list[Path]) -> st.SearchStrategy[bytes]:
    """A fixture with bytes cut out, inserted or flipped; or plain random bytes."""
    good = st.sampled_from(paths).map(lambda p: p.read_bytes())
    edit = st.tuples(good, st.integers(0, 10_000), st.integers(0, 40), st.binary(max_size=30))
    return st.binary(max_size=500) | edit.map(lambda t: t[0][: t[1] % (len(t[0]) + 1)] + t[3] + t[0][t[1] % (len(t[0]) + 1) + t[2] :])


def _fuzz(source: str, examples: int) -> None:
    parse, paths = SAMPLES[source]
    assert paths, f"no fixtures for {source}"

    inputs = mutated(paths)
    if all(path.suffix == ".json" for path in paths):  # and JSON built to break a reader (tests/hostile.py)
        inputs = inputs | hostile_json([path.read_bytes() for path in paths])

    @settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
    @given(inputs)
    def check(data: bytes) -> None:
        try:
            parse(data)
        except (GatewayInputError, Hl7Error) as error:
            _refusal_is_clear(error)

    check()


@cache
def intake_mapping(source: str) -> Callable[[bytes], dict[str, Any]]:
    """The intake's offline mapping (adapter, rules, FHIR mapping, Bundle) of the "nhs111" or "bars" samples."""
    from gateway.cas.intake import CHANNEL_BARS, CHANNEL_NHS111, map_offline
    from gateway.cas.rules.schema import load_rules
    from tests.conftest import NOW

    registry, kind = load_rules(), {"nhs111": CHANNEL_NHS111, "bars": CHANNEL_BARS}[source]
    return lambda raw: map_offline(raw, registry, NOW, kind=kind)


@pytest.mark.parametrize("source", ["nhs111", "bars"])
def test_whatever_is_accepted_maps_to_resources_the_fhir_models_accept_and_serialise_alike(source: str) -> None:
    """The mapping builds FHIR JSON without the models (fhir_mapping.fhir.build); in check mode (the suite's) every
    resource is validated by its fhir.resources R4B model and must serialise byte for byte as the model would."""
    from fhir_mapping.fhir import checking

    assert checking()
    mapped, (_, paths) = intake_mapping(source), SAMPLES[source]

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(mutated(paths))
    def check(data: bytes) -> None:
        try:
            bundle = mapped(data)
        except GatewayInputError:
            return
        assert bundle["entry"]

    check()


_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=0, max_size=30)


@st.composite
def varied_cases(draw: st.DrawFn) -> bytes:
    """A valid flat case from a fixture, its free-text and demographic values replaced by arbitrary text (or left out)."""
    case = json.loads(draw(st.sampled_from(SAMPLES["nhs111"][1])).read_bytes())
    patient = case["patient"]
    for key in ("family", "postcode"):
        value = draw(st.none() | _TEXT)
        patient.pop(key, None) if value is None else patient.__setitem__(key, value)
    patient["given"] = draw(st.lists(_TEXT, max_size=3))
    case["free_text"] = draw(st.none() | _TEXT)
    for flag in case.get("red_flags", []):
        flag["question"] = draw(_TEXT)
    return json.dumps(case).encode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(varied_cases())
def test_arbitrary_text_in_an_accepted_case_maps_to_what_the_fhir_models_accept(data: bytes) -> None:
    try:
        intake_mapping("nhs111")(data)
    except GatewayInputError:
        pass


@pytest.mark.parametrize("source", sorted(SAMPLES))
def test_adapter_never_fails_except_with_a_clear_refusal(source: str) -> None:
    _fuzz(source, CI_EXAMPLES)


@pytest.mark.nightly
@pytest.mark.parametrize("source", sorted(SAMPLES))
def test_adapter_never_fails_except_with_a_clear_refusal_nightly(source: str) -> None:
    _fuzz(source, NIGHTLY_EXAMPLES)


# Each element of each JSON fixture in turn replaced by a value of each other JSON type (type errors, which byte-level
# mutation seldom makes in JSON that still parses). NHS 111 cases and BaRS messages go through the rules and the mapping
# too (a wrongly typed value must not reach the FHIR it is mapped to).
_OTHER_TYPES: tuple[Any, ...] = (123, "text", [], {}, None, True, [1], {"a": 1})


def _element_paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    return [found for key, value in children for found in [(*path, key), *_element_paths(value, (*path, key))]]


def _replaced(document: Any, path: tuple[Any, ...], value: Any) -> bytes:
    copy = json.loads(json.dumps(document))
    node = copy
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return json.dumps(copy).encode()


@pytest.mark.parametrize("source", ["nhs111", "bars", "mhpl", "cleo", "pathway"])
def test_any_element_of_another_json_type_is_refused_clearly_or_mapped(source: str) -> None:
    parse = intake_mapping(source) if source in ("nhs111", "bars") else SAMPLES[source][0]
    tried = 0
    for fixture in SAMPLES[source][1]:
        document = json.loads(fixture.read_bytes())
        for path in _element_paths(document):
            for value in _OTHER_TYPES:
                tried += 1
                try:
                    parse(_replaced(document, path, value))
                except GatewayInputError as error:
                    _refusal_is_clear(error)
    assert tried, f"no {source} fixtures"


def test_a_wrongly_typed_element_of_a_bars_message_is_refused_by_its_path(client) -> None:  # type: ignore[no-untyped-def]
    """Before the shape check, a number where Patient.name[0].given's array belongs crashed the adapter (500)."""
    from tests.conftest import bars_headers, fixture_json, issues

    body = fixture_json("bars-dx335-immediate.bundle.json")
    index, patient = next((i, e["resource"]) for i, e in enumerate(body["entry"]) if e["resource"]["resourceType"] == "Patient")
    patient["name"][0]["given"] = 123
    response = client.post("/fhir/$process-message", content=json.dumps(body), headers=bars_headers())
    assert response.status_code == 400
    [(severity, element, message)] = issues(response.json())
    assert (severity, element) == ("error", f"Bundle.entry[{index}].resource.name[0].given")
    assert message == "must be an array (FHIR JSON), got a number"


def test_a_wrongly_typed_element_of_a_pathway_referral_is_refused_by_its_path(client) -> None:  # type: ignore[no-untyped-def]
    """Before the shape check, a number where ServiceRequest.performer's array belongs crashed the adapter (500)."""
    from tests.conftest import issues

    body = json.loads((FIXTURES / "pathways" / "pc-crisis-response.servicerequest.json").read_bytes())
    body["performer"] = 123
    response = client.post("/fhir/ServiceRequest/$route", content=json.dumps(body))
    assert response.status_code == 400
    [(severity, element, message)] = issues(response.json())
    assert (severity, element, message) == ("error", "ServiceRequest.performer", "must be an array (FHIR JSON), got a number")


def test_a_gp_identifier_without_a_value_names_no_practice_and_the_referral_is_routed_by_PC_01(client) -> None:  # type: ignore[no-untyped-def]
    """Found by the nightly fuzz: an ODS identifier with no value crashed the pathway adapter (KeyError, a 500)."""
    body = json.loads((FIXTURES / "pathways" / "pc-step-up-from-secondary-care.servicerequest.json").read_bytes())
    patient = next(r for r in body["contained"] if r["resourceType"] == "Patient")
    for practitioner in patient["generalPractitioner"]:
        practitioner["identifier"].pop("value")
    assert parse_pathway_referral(json.dumps(body).encode()).gp_practice is None
    response = client.post("/fhir/ServiceRequest/$route", content=json.dumps(body))
    assert response.status_code in (200, 201), response.text
    assert "PC-01" in response.text and "GP practice (none given) is not in the place's PCNs" in response.text


_ABSENT = {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "masked"}]}


def test_a_name_part_with_only_extensions_is_accepted_as_fhir_json_allows_and_a_bare_null_is_refused(client) -> None:  # type: ignore[no-untyped-def]
    """FHIR JSON (R4 2.6.2.7): a primitive array item may be null where `_given` holds its extensions at that index.
    The BaRS adapter reads such a name part as absent; a null with no extensions beside it is refused by its path."""
    from tests.conftest import bars_headers, fixture_json, issues, task_of

    body = fixture_json("bars-dx335-immediate.bundle.json")
    index, patient = next((i, e["resource"]) for i, e in enumerate(body["entry"]) if e["resource"]["resourceType"] == "Patient")
    name = patient["name"][0]
    name["given"], name["_given"] = [None, *name["given"]], [_ABSENT, *([None] * len(name["given"]))]
    accepted = client.post("/fhir/$process-message", content=json.dumps(body), headers=bars_headers())
    assert accepted.status_code == 200, accepted.text
    task = client.get(f"/fhir/Task/{task_of(accepted.json())['id']}").json()
    stored = client.get(f"/fhir/{task['for']['reference']}")
    assert stored.status_code == 200 and stored.json()["name"][0]["given"] == name["given"][1:]

    name["_given"] = None
    refused = client.post("/fhir/$process-message", content=json.dumps(body), headers=bars_headers())
    assert refused.status_code == 400
    element = f"Bundle.entry[{index}].resource.name[0].given[0]"
    assert issues(refused.json()) == [("error", element, "must be a string (FHIR JSON), got null")]


def test_a_pathway_referrals_name_part_with_only_extensions_is_read_as_absent(client) -> None:  # type: ignore[no-untyped-def]
    body = json.loads((FIXTURES / "pathways" / "pc-crisis-response.servicerequest.json").read_bytes())
    patient = next(r for r in body["contained"] if r["resourceType"] == "Patient")
    name = patient["name"][0]
    name["given"], name["_given"] = [*name["given"], None], [*([None] * len(name["given"])), _ABSENT]
    assert parse_pathway_referral(json.dumps(body).encode()).patient.given == tuple(name["given"][:-1])
    response = client.post("/fhir/ServiceRequest/$route", content=json.dumps(body))
    assert response.status_code in (200, 201), response.text
