"""Deterministic ids (fhir_mapping/ids.py): the same answers as `uuid.uuid5`, which they were made with before."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_mapping.ids import NAMESPACE, resource_id


@settings(max_examples=2_000, deadline=None)
@given(st.text(max_size=40), st.text(max_size=80), st.text(max_size=200))
def test_a_resource_id_is_the_uuid5_of_type_system_and_value(resource_type: str, system: str, value: str) -> None:
    name = f"{resource_type}|{system}|{value}"
    try:
        expected = str(uuid.uuid5(NAMESPACE, name))
    except UnicodeEncodeError:  # a lone surrogate: uuid5 cannot encode it, and neither can resource_id
        with pytest.raises(UnicodeEncodeError):
            resource_id(resource_type, system, value)
        return
    assert resource_id(resource_type, system, value) == expected


def test_ids_already_stored_are_made_again_unchanged() -> None:
    """An id as `uuid.uuid5` made it (and as stores hold it): a replay of its input must find the same resource."""
    assert resource_id("Task", "https://fhir.nhs.uk/Id/nhs111-case", "111-CASE-0001") == "34a11154-bc6c-591e-9665-fca273f1845f"
    made = uuid.UUID(resource_id("Patient", "s", "v"))
    assert (made.version, made.variant) == (5, uuid.RFC_4122)
