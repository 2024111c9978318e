"""Query-parameter parsing that names the offending field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import orjson
from aiohttp import web

from stripemeter.api.appkeys import SETTINGS
from stripemeter.api.auth import check_tenant
from stripemeter.api.errors import bad_request
from stripemeter.api.http_metrics import Handler
from stripemeter.domain.instants import BadInstant, parse_instant_ms

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def required(request: web.Request, name: str) -> str:
    value = request.query.get(name)
    if not value:
        raise bad_request(name, "is required", code="missing_parameter")
    return value


def optional_time(request: web.Request, name: str) -> datetime | None:
    """An instant as replay and `topics tail` take it: RFC 3339 with an offset, ``now``, or a signed
    ISO 8601 duration relative to now (``-P1D``, ``-PT6H``) on the deployment's clock."""
    raw = request.query.get(name)
    if not raw:
        return None
    try:
        return EPOCH + timedelta(milliseconds=parse_instant_ms(raw, request.app[SETTINGS].clock.ms()))
    except BadInstant as exc:
        raise bad_request(name, exc.detail) from None
    except (OverflowError, ValueError):  # 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        raise bad_request(name, "is out of range") from None


Choice = TypeVar("Choice", bound=str)


def choice(request: web.Request, name: str, options: tuple[Choice, ...], default: Choice) -> Choice:
    value = request.query.get(name, default)
    for option in options:  # the option equal to it: typed as one of the options
        if value == option:
            return option
    raise bad_request(name, f"must be one of {', '.join(options)}")


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


async def json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise bad_request("body", "is not valid JSON", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("body", "must be a JSON object", code="invalid_body")
    return body


def body_text(body: dict[str, Any], field: str, max_len: int = 255) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not 1 <= len(value) <= max_len:
        raise bad_request(field, f"is required: a string of 1-{max_len} characters")
    if "\x00" in value:
        raise bad_request(field, "must not contain the NUL character")
    return value


def optional_body_text(body: dict[str, Any], field: str, max_len: int = 255) -> str | None:
    return None if body.get(field) is None else body_text(body, field, max_len)


def tenant(request: web.Request) -> str:
    """The ``tenantId`` query parameter: required, and one the caller's key may see."""
    return check_tenant(request, required(request, "tenantId"))


def body_tenant(request: web.Request, body: dict[str, Any]) -> str:
    """The body's ``tenantId``: well-formed, and one the caller's key may see."""
    return _seen_tenant(request, body_text(body, "tenantId", 64))


def path_tenant(request: web.Request) -> str:
    """The path's ``{tenantId}``: well-formed, and one the caller's key may see."""
    return _seen_tenant(request, request.match_info["tenantId"])


def _seen_tenant(request: web.Request, value: str) -> str:
    from stripemeter.schemas.events import TENANT_RE

    if not TENANT_RE.fullmatch(value):
        raise bad_request("tenantId", f"must match {TENANT_RE.pattern}")
    return check_tenant(request, value)


def row_view(row: dict[str, Any]) -> dict[str, Any]:
    """A stored row as the API shows it: camelCase names, times in ISO 8601."""

    def camel(name: str) -> str:
        head, *rest = name.split("_")
        return head + "".join(part.title() for part in rest)

    return {camel(k): (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}


@web.middleware
async def no_nul_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """400 for a NUL character in a query parameter or path segment: PostgreSQL text cannot hold it."""
    for name, value in (*request.query.items(), *request.match_info.items()):
        if "\x00" in name or "\x00" in value:
            raise bad_request(name.replace("\x00", "\\0"), "must not contain the NUL character")
    return await handler(request)
