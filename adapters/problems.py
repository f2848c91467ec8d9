"""Problems found in input, and the one exception that carries them.

Every stage (parse, map, rules, store) reports what is wrong with an input as
`Problem`s; the API turns them into one FHIR OperationOutcome (or, for HL7 v2, an
ACK). The exception tree:

    GatewayInputError          input refused; .problems says why, element by element
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

__all__ = ["Kind", "Problem", "GatewayInputError", "ProblemList"]


class Kind(Enum):
    """What sort of problem, and so which HTTP status / BaRS error code / FHIR issue code.

    Values: (http status, BaRS http-error-code, FHIR issue-type code).
    """

    STRUCTURE = (400, "REC_BAD_REQUEST", "structure")
    INVALID = (400, "REC_BAD_REQUEST", "invalid")
    REQUIRED = (400, "REC_BAD_REQUEST", "required")
    VALUE = (400, "REC_BAD_REQUEST", "value")
    INVARIANT = (400, "REC_BAD_REQUEST", "invariant")
    NOT_SUPPORTED = (422, "REC_UNPROCESSABLE_ENTITY", "not-supported")
    UNKNOWN_PARAMETER = (400, "REC_BAD_REQUEST", "not-supported")  # a search parameter not served (Prefer: handling=strict)
    NOT_ACCEPTABLE = (406, "REC_NOT_ACCEPTABLE", "not-supported")  # a reply format (Accept, _format) not served
    UNPROCESSABLE = (422, "REC_UNPROCESSABLE_ENTITY", "processing")  # well-formed, but breaks the definition it claims
    BUSINESS_RULE = (422, "REC_UNPROCESSABLE_ENTITY", "business-rule")
    TOO_LARGE = (413, "REC_UNPROCESSABLE_ENTITY", "too-costly")
    DUPLICATE = (409, "REC_CONFLICT", "duplicate")
    CONFLICT = (409, "REC_CONFLICT", "conflict")  # refused state change (e.g. a priority downgrade, CAS-08)
    NOT_FOUND = (404, "REC_NOT_FOUND", "not-found")
    UNAUTHENTICATED = (401, "REC_UNAUTHORIZED", "forbidden")  # no or bad credentials (BaRS: 401-REC_UNAUTHORIZED-forbidden)
    FORBIDDEN = (403, "REC_FORBIDDEN", "forbidden")  # authenticated, but this client may not do this
    TIMEOUT = (408, "REC_TIMEOUT", "timeout")  # the request did not arrive in time
    UNAVAILABLE = (503, "REC_SERVICE_UNAVAILABLE", "transient")  # not ready (readiness probe)

    @property
    def http_status(self) -> int:
        return self.value[0]

    @property
    def error_code(self) -> str:
        return self.value[1]

    @property
    def issue_code(self) -> str:
        return self.value[2]


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or worth a warning) in an input, tied to the element it concerns.

    `element` is a FHIRPath-style location in the input as the sender wrote it
    (e.g. ``Bundle.entry[5].resource.identifier[0].value`` or ``patient.nhs_number``).
    Messages never carry patient identifiers or clinical text.
    """

    kind: Kind
    element: str
    message: str
    severity: str = "error"  # error | warning | information

    @property
    def is_error(self) -> bool:
        return self.severity in ("error", "fatal")


@dataclass
class ProblemList:
    """Collects problems while a stage walks an input, so the sender hears all of them at once."""

    items: list[Problem] = field(default_factory=list)

    def error(self, kind: Kind, element: str, message: str) -> None:
        self.items.append(Problem(kind, element, message))

    def warning(self, kind: Kind, element: str, message: str) -> None:
        self.items.append(Problem(kind, element, message, severity="warning"))

    @property
    def has_errors(self) -> bool:
        return any(p.is_error for p in self.items)

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.items if not p.is_error]

    def raise_if_errors(self, stage: str) -> None:
        if self.has_errors:
            raise GatewayInputError(self.items, stage=stage)


class GatewayInputError(Exception):
    """The input is refused. Carries every problem found (errors first, then warnings)."""

    def __init__(self, problems: list[Problem] | Problem, stage: str = "parse") -> None:
        if isinstance(problems, Problem):
            problems = [problems]
        self.problems = sorted(problems, key=lambda p: not p.is_error)
        self.stage = stage
        first = self.first_error
        super().__init__(f"{stage}: {first.element}: {first.message}" if first else stage)

    @property
    def first_error(self) -> Problem | None:
        return next((p for p in self.problems if p.is_error), None)

    @property
    def http_status(self) -> int:
        first = self.first_error
        return first.kind.http_status if first else 400
