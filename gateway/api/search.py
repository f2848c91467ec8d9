"""Search plumbing shared by the FHIR routers: parameter checks and searchset Bundles with paging links."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import Request

from adapters.problems import GatewayInputError, Kind, Problem
from fhir_mapping.datetimes import LONDON, parse_source_datetime
from gateway.audit import note

__all__ = ["refuse_unknown", "int_param", "split_list", "searchset", "MAX_COUNT", "paging", "date_filter"]

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


def date_filter(value: str) -> tuple[str, datetime]:
    """`ge2026-11-01`, `lt2026-11-23T12:00:00Z`: a prefix and an instant (a bare date is London midnight)."""
    op, rest = (value[:2], value[2:]) if value[:2] in ("eq", "ge", "le", "gt", "lt") else ("eq", value)
    try:
        if "T" in rest:
            return op, parse_source_datetime(rest)
        return op, datetime.fromisoformat(rest).replace(tzinfo=LONDON)
    except ValueError:
        raise GatewayInputError(
            Problem(Kind.VALUE, "date", f"{value[:40]!r} is not [prefix]YYYY-MM-DD or an instant with offset")
        ) from None


def searchset(
    request: Request, resources: list[dict[str, Any]], total: int, count: int, offset: int, audited: bool = True
) -> dict[str, Any]:
    """A searchset Bundle with paging links; what it returns is noted for the request's AuditEvent (unless `audited` is False)."""
    if audited:
        note(*resources)
    base = str(request.base_url).rstrip("/")

    def link(relation: str, new_offset: int) -> dict[str, str]:
        query = [(k, v) for k, v in request.query_params.multi_items() if k != "_offset"] + [("_offset", str(new_offset))]
        return {"relation": relation, "url": f"{base}{request.url.path}?{urlencode(query)}"}

    links = [link("self", offset)]
    if offset + count < total and count:
        links.append(link("next", offset + count))
    if offset > 0:
        links.append(link("previous", max(0, offset - count)))
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": total, "link": links}
    if resources:  # FHIR JSON has no empty arrays: no matches, no `entry`
        bundle["entry"] = [
            {"fullUrl": f"{base}/fhir/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": "match"}} for r in resources
        ]
    return bundle
