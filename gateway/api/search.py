"""Search plumbing shared by the FHIR routers: parameter checks and searchset Bundles with paging links."""

from __future__ import annotations

import uuid
from datetime import datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from sqlalchemy.orm import Session
from starlette.datastructures import QueryParams

from adapters.problems import GatewayInputError, Kind, Problem
from common.datetimes import LONDON, parse_source_datetime
from fhir_mapping.replies import operation_outcome
from gateway.api.search_params import SEARCHES
from gateway.platform.audit import note
from gateway.platform.store.repo import ResourceQuery, search_resources

__all__ = ["refuse_unknown", "int_param", "split_list", "searchset", "MAX_COUNT", "paging", "date_filter", "Search", "handling"]

MAX_COUNT = 200


def paging(params: Any) -> tuple[int, int]:
    """(_count, _offset) from the query, checked."""
    return int_param(params.get("_count"), "_count", 50, 0, MAX_COUNT), int_param(params.get("_offset"), "_offset", 0, 0, 10_000_000)


def refuse_unknown(names: Any, allowed: set[str], rtype: str) -> None:
    unknown = sorted(set(names) - allowed)
    if unknown:
        raise GatewayInputError(
            [
                Problem(Kind.NOT_SUPPORTED, name, f"search parameter {name!r} is not supported for {rtype}; supported: {sorted(allowed)}")
                for name in unknown
            ]
        )


def int_param(value: str | None, name: str, default: int, low: int, high: int) -> int:
    if value is None:
        return default
    if not value.isdigit() or not low <= int(value) <= high:
        raise GatewayInputError(Problem(Kind.VALUE, name, f"{name} must be a whole number from {low} to {high}"))
    return int(value)


def split_list(value: str | None) -> list[str] | None:
    return [v for v in value.split(",") if v] if value else None


def date_filter(value: str, name: str = "date") -> tuple[str, datetime]:
    """`ge2026-11-01`, `lt2026-11-23T12:00:00Z`: a prefix and an instant (a bare date is London midnight)."""
    op, rest = (value[:2], value[2:]) if value[:2] in ("eq", "ge", "le", "gt", "lt") else ("eq", value)
    try:
        if "T" in rest:
            return op, parse_source_datetime(rest)
        return op, datetime.fromisoformat(rest).replace(tzinfo=LONDON)
    except ValueError:
        raise GatewayInputError(Problem(Kind.VALUE, name, f"{value[:40]!r} is not [prefix]YYYY-MM-DD or an instant with offset")) from None


def day_filter(value: str, name: str) -> list[tuple[str, datetime]]:
    """`date_filter`, a bare date meaning the whole (London) day as FHIR search does: `eq2026-11-23` (or `2026-11-23`)
    is that day, `gt` after it, `le` up to its end."""
    op, moment = date_filter(value, name)
    if "T" in value:
        return [(op, moment)]
    end = datetime.combine(moment.date() + timedelta(days=1), time(), LONDON)
    ranges = {"eq": [("ge", moment), ("lt", end)], "ge": [("ge", moment)], "lt": [("lt", moment)], "gt": [("ge", end)], "le": [("lt", end)]}
    return ranges[op]


def handling(request: Request) -> str:
    """`Prefer: handling=strict|lenient` (RFC 7240, FHIR search): strict unless the client asks for lenient."""
    for preference in request.headers.get("prefer", "").split(","):
        name, _, value = preference.strip().partition("=")
        if name.strip().lower() == "handling" and value.strip().strip('"').lower() == "lenient":
            return "lenient"
    return "strict"


class Search:
    """A search request on `rtype`, its parameters checked against the type's (gateway.api.search_params).

    A parameter the type does not take is refused, 400 naming it, unless the client sent `Prefer: handling=lenient`:
    then it is ignored, left out of the paging links, and named in a warning OperationOutcome in the Bundle.
    The common parameters are read here: `_count`, `_offset`, `_summary=count` (the total only), `_id`, `_lastUpdated`.
    """

    def __init__(self, request: Request, rtype: str) -> None:
        spec = SEARCHES[rtype]
        self.request, self.rtype, self.spec = request, rtype, spec
        items = request.query_params.multi_items()
        self.ignored = sorted({name for name, _ in items if name not in spec.allowed})
        if self.ignored and handling(request) == "strict":
            raise GatewayInputError(
                [
                    Problem(
                        Kind.UNKNOWN_PARAMETER,
                        name,
                        f"search parameter {name[:40]!r} is not supported for {rtype}; supported: {sorted(spec.allowed)}",
                    )
                    for name in self.ignored
                ]
            )
        self.params = QueryParams([(k, v) for k, v in items if k not in self.ignored])
        self.count, self.offset = paging(self.params)
        summary = self.params.get("_summary")
        if summary not in (None, "false", "count"):
            raise GatewayInputError(Problem(Kind.NOT_SUPPORTED, "_summary", "_summary takes count or false here"))
        self.summary_count = summary == "count"
        if self.summary_count:
            self.count = 0
        ids: set[str] | None = None
        for value in self.params.getlist("_id"):  # a comma is "any of"; repeating the parameter is "all of"
            ids = set(split_list(value) or []) if ids is None else ids & set(split_list(value) or [])
        self.ids = sorted(ids) if ids is not None else None
        self.last_updated = [f for value in self.params.getlist("_lastUpdated") for f in day_filter(value, "_lastUpdated")]

    def get(self, name: str) -> str | None:
        return self.params.get(name)

    def resources(self, session: Session, **filters: Any) -> tuple[list[dict[str, Any]], int]:
        """One page of this type's matches (and the total): the type's own `filters` (ResourceQuery's fields), `patient`
        and the common parameters as the request gave them. Reads through `search_resources`, so service binding holds."""
        query = ResourceQuery(
            self.rtype,
            patient=self.get("patient"),
            count=self.count,
            offset=self.offset,
            ids=self.ids,
            last_updated=self.last_updated,
            **filters,
        )
        return search_resources(session, query)

    def getlist(self, name: str) -> list[str]:
        return self.params.getlist(name)

    def bundle(
        self, resources: list[dict[str, Any]], total: int, included: list[dict[str, Any]] | None = None, audited: bool = True
    ) -> dict[str, Any]:
        """The searchset Bundle: the matches, what `_include`/`_revinclude` brought, a warning for ignored parameters."""
        outcome = None
        if self.ignored:
            outcome = operation_outcome(
                [
                    Problem(
                        Kind.UNKNOWN_PARAMETER,
                        name,
                        f"search parameter {name[:40]!r} is not supported for {self.rtype}: ignored",
                        "warning",
                    )
                    for name in self.ignored
                ]
            )
        return searchset(
            self.request, resources, total, self.count, self.offset, audited, included=included, outcome=outcome, dropped=set(self.ignored)
        )


def searchset(
    request: Request,
    resources: list[dict[str, Any]],
    total: int,
    count: int,
    offset: int,
    audited: bool = True,
    included: list[dict[str, Any]] | None = None,
    outcome: dict[str, Any] | None = None,
    dropped: set[str] | None = None,
) -> dict[str, Any]:
    """A searchset Bundle with paging links; what it returns is noted for the request's AuditEvent (unless `audited` is False).

    `included`: resources an `_include`/`_revinclude` brought (search mode include); `outcome`: an OperationOutcome
    about the search itself (search mode outcome); `dropped`: parameters ignored, left out of the links."""
    if audited:
        note(*resources, *(included or []))
    base = str(request.base_url).rstrip("/")
    left_out = {"_offset", *(dropped or set())}

    def link(relation: str, new_offset: int) -> dict[str, str]:
        query = [(k, v) for k, v in request.query_params.multi_items() if k not in left_out] + [("_offset", str(new_offset))]
        return {"relation": relation, "url": f"{base}{request.url.path}?{urlencode(query)}"}

    links = [link("self", offset)]
    if offset + count < total and count:
        links.append(link("next", offset + count))
    if offset > 0:
        links.append(link("previous", max(0, offset - count)))
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": total, "link": links}
    entries = [
        {"fullUrl": f"{base}/fhir/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": mode}}
        for mode, group in (("match", resources), ("include", included or []))
        for r in group
    ]
    if outcome is not None:
        entries.append({"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": outcome, "search": {"mode": "outcome"}})
    if entries:  # FHIR JSON has no empty arrays: no matches, no `entry`
        bundle["entry"] = entries
    return bundle
