"""Property-based: every adapter, fed random and mutated input, refuses cleanly or parses: never another exception."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.bars import parse_bars_message
from adapters.cleo import parse_cleo_update
from adapters.mhpl import parse_mhpl_call
from adapters.nhs111_case import parse_nhs111_case
from adapters.problems import GatewayInputError
from tests.conftest import ROOT

SAMPLES = {
    "nhs111": (parse_nhs111_case, sorted((ROOT / "fixtures" / "nhs111").glob("*.case.json"))),
    "bars": (
        lambda raw: parse_bars_message(raw, str(uuid.UUID(int=1)), str(uuid.UUID(int=2))),
        sorted((ROOT / "fixtures" / "nhs111").glob("*.bundle.json")),
    ),
    "mhpl": (parse_mhpl_call, sorted((ROOT / "fixtures" / "mhpl").glob("*.json"))),
    "cleo": (parse_cleo_update, sorted((ROOT / "fixtures" / "cleo").glob("*.json"))),
}


def mutated(paths: list) -> st.SearchStrategy[bytes]:  # type: ignore[type-arg]
    """A fixture with bytes cut out, inserted or flipped; or plain random bytes."""
    good = st.sampled_from(paths).map(lambda p: p.read_bytes())
    edit = st.tuples(good, st.integers(0, 10_000), st.integers(0, 40), st.binary(max_size=30))
    return st.binary(max_size=500) | edit.map(lambda t: t[0][: t[1] % (len(t[0]) + 1)] + t[3] + t[0][t[1] % (len(t[0]) + 1) + t[2] :])


@pytest.mark.parametrize("source", sorted(SAMPLES))
def test_adapter_never_fails_except_with_a_clear_refusal(source: str) -> None:
    parse, paths = SAMPLES[source]

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(mutated(paths))
    def check(data: bytes) -> None:
        try:
            parse(data)
        except GatewayInputError as error:
            assert error.problems and all(p.element is not None and p.message for p in error.problems)

    check()
