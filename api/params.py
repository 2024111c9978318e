"""Query-parameter parsing that names the offending field."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web
from stripemeter.api.errors import bad_request


def required(request: web.Request, name: str) -> str:
    value = request.query.get(name)
    if not value:
        raise bad_request(name, "is required", code="missing_parameter")
    return value


def optional_time(request: web.Request, name: str) -> datetime | None:
    raw = request.query.get(name)
    if not raw:
        return None
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise bad_request(name, "must be an RFC 3339 date-time") from None
    if parsed.tzinfo is None:
        raise bad_request(name, "must carry a UTC offset, e.g. 2026-11-20T00:00:00Z")
    return parsed.astimezone(UTC)


def choice(request: web.Request, name: str, options: tuple[str, ...], default: str) -> str:
    value = request.query.get(name, default)
    if value not in options:
        raise bad_request(name, f"must be one of {', '.join(options)}")
    return value


def integer(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(name, "must be an integer") from None
    if not low <= value <= high:
        raise bad_request(name, f"must be between {low} and {high}")
    return value
