"""Stripe list objects and cursor pagination (`limit`, `starting_after`, `ending_before`).

Lists are newest first. `starting_after` pages towards older objects, `ending_before` towards newer
ones; both cursors are object ids that must be in the list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from stripemeter.tools.stripe_emulator.stripe_errors import invalid, parse_int

DEFAULT_LIMIT = 10
MAX_LIMIT = 100


def parse_limit(params: Mapping[str, Any]) -> int:
    if "limit" not in params:
        return DEFAULT_LIMIT
    limit = parse_int(params["limit"], "limit")
    if not 1 <= limit <= MAX_LIMIT:
        raise invalid(f"Invalid limit: must be between 1 and {MAX_LIMIT}.", param="limit")
    return limit


def _index(items: Sequence[Mapping[str, Any]], object_id: Any, param: str) -> int:
    for i, item in enumerate(items):
        if item["id"] == object_id:
            return i
    raise invalid(f"Invalid {param}: no object with id '{object_id}' in this list.", param=param)


def paginate(items: Sequence[Mapping[str, Any]], params: Mapping[str, Any], url: str) -> dict[str, Any]:
    """Cut one page out of `items` (already newest first) and wrap it as a Stripe list object."""
    limit = parse_limit(params)
    if params.get("starting_after") and params.get("ending_before"):
        raise invalid("You may only specify one of these parameters: ending_before, starting_after.")
    if params.get("ending_before"):
        before = items[: _index(items, params["ending_before"], "ending_before")]
        page, has_more = before[-limit:], len(before) > limit
    else:
        start = 0
        if params.get("starting_after"):
            start = _index(items, params["starting_after"], "starting_after") + 1
        page, has_more = items[start : start + limit], len(items) > start + limit
    return {"object": "list", "data": list(page), "has_more": has_more, "url": url}
