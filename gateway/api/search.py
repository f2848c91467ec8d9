"""Search plumbing shared by the FHIR routers: parameter checks and searchset Bundles with paging links."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import Request

from adapters.problems import GatewayInputError, Kind, Problem

__all__ = ["refuse_unknown", "int_param", "split_list", "searchset", "MAX_COUNT", "paging"]

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


def searchset(request: Request, resources: list[dict[str, Any]], total: int, count: int, offset: int) -> dict[str, Any]:
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
