"""Pages of a list: every list endpoint takes ``limit`` (default 100, at most 1000) and ``cursor``, and
answers ``nextCursor`` (null on the last page), as GET /v1/events does in the contract.

A cursor is the sort key of the last row of the page, opaque to the client (URL-safe base64 of a JSON
array): the next page starts after it (keyset pagination, one index range per page, however deep).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from stripemeter.api import params
from stripemeter.api.errors import bad_request

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

Key = tuple[Any, ...]


@dataclass(frozen=True)
class PageRequest:
    limit: int
    after: Key | None  # the sort key of the previous page's last row


def encode_cursor(key: Sequence[Any]) -> str:
    values = [v.isoformat() if isinstance(v, datetime) else v for v in key]
    return base64.urlsafe_b64encode(orjson.dumps(values)).decode()


def decode_cursor(text: str, types: Sequence[type]) -> Key:
    """The key a cursor holds, each value of its type (``datetime`` from ISO 8601): 400 naming
    ``cursor`` for anything this API did not hand out."""
    try:
        values = orjson.loads(base64.urlsafe_b64decode(text.encode()))
        if not isinstance(values, list) or len(values) != len(types):
            raise ValueError("shape")
        key: list[Any] = []
        for kind, value in zip(types, values, strict=True):
            if kind is datetime:
                parsed = datetime.fromisoformat(value)
                if parsed.tzinfo is None:
                    raise ValueError("naive")
                key.append(parsed)
            elif (kind is int and isinstance(value, int) and not isinstance(value, bool)) or (
                kind is str and isinstance(value, str) and "\x00" not in value
            ):
                key.append(value)
            else:
                raise ValueError("type")
        return tuple(key)
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise bad_request("cursor", "is not a cursor this API returned") from None


def page_request(request: web.Request, types: Sequence[type]) -> PageRequest:
    limit = params.integer(request, "limit", default=DEFAULT_LIMIT, low=1, high=MAX_LIMIT)
    cursor = request.query.get("cursor")
    return PageRequest(limit, decode_cursor(cursor, types) if cursor else None)


def page(
    rows: list[dict[str, Any]], asked: PageRequest, key: Callable[[dict[str, Any]], Key]
) -> tuple[list[dict[str, Any]], str | None]:
    """``rows`` fetched with ``limit + 1``: the page, and the cursor of the next one if there is one."""
    if len(rows) <= asked.limit:
        return rows, None
    rows = rows[: asked.limit]
    return rows, encode_cursor(key(rows[-1]))
