"""Moved to `common.datetimes` (below adapters and fhir_mapping both); the old name imports the same objects."""

from common.datetimes import *  # noqa: F403
from common.datetimes import __all__, _england_bank_holidays  # noqa: F401
