"""Moved to `common.codes` (below adapters and fhir_mapping both); the old name imports the same objects."""

from common.codes import *  # noqa: F403
from common.codes import __all__  # noqa: F401
