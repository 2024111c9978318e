"""Domain errors -> HTTP statuses, in one place. Every error body is ``{"error": {code, message}}``.

Handlers raise ``ApiError`` (or ``bad_request``) for what only HTTP knows, and let the domain's own
errors (stripemeter.domain.errors) through: ``api_error`` answers each by its kind, and the error middleware
(api/app.py) writes the answer. Handlers do not catch domain errors to translate them.

- ``Conflict`` (an ``Invalid`` that contradicts what is stored) -> 409, with ``field`` likewise;
- ``NotFound`` (an ``Invalid`` naming something that does not exist) -> 404, likewise;
- ``Forbidden`` (an ``Invalid`` the caller may not use) -> 403, likewise;
- ``Invalid`` -> 400 ``{"code", "message": "{field}: {detail}", "field"}`` (as ``bad_request``);
  without a field: the detail alone, no ``field``;
- ``Busy`` (a ``Transient``: the same work runs now for another request) -> 409, with ``Retry-After``;
- ``Backpressure`` -> 429, with ``Retry-After`` (whole seconds, at least 1) when ``retry_after`` is known;
- ``Transient`` -> 503, with ``Retry-After`` likewise;
- ``Permanent`` (and anything else) -> None: the service's own failure, a logged 500 ``internal_error``.

PostgreSQL's own refusals are answered by ``database_error``: no pool connection free within
``STRIPEMETER_DB_POOL_TIMEOUT_SECONDS`` -> 503 ``database_busy``; a statement cancelled by
``STRIPEMETER_DB_STATEMENT_TIMEOUT_SECONDS`` -> 503 ``statement_timeout``; both with ``Retry-After``.
"""

from __future__ import annotations

import math
from typing import Any

import psycopg
from aiohttp import web
from psycopg_pool import PoolTimeout

from stripemeter.domain.errors import (
    Backpressure,
    Busy,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    StripemeterError,
    Transient,
)

DATABASE_RETRY_AFTER_SECONDS = 1.0


class ApiError(Exception):
    status = 400

    def __init__(
        self,
        code: str,
        message: str,
        field: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}
        if status is not None:
            self.status = status

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field:
            error["field"] = self.field
        return {"error": error}


def bad_request(field: str, message: str, code: str = "invalid_parameter") -> ApiError:
    return ApiError(code, f"{field}: {message}", field=field)


def api_error(exc: StripemeterError) -> ApiError | None:
    """The HTTP answer to a domain error, by its kind; None when it is the service's own failure (500)."""
    if isinstance(exc, (Conflict, NotFound, Forbidden)):
        message = f"{exc.field}: {exc.detail}" if exc.field else exc.detail
        status = 409 if isinstance(exc, Conflict) else 404 if isinstance(exc, NotFound) else 403
        return ApiError(exc.code, message, field=exc.field, status=status)
    if isinstance(exc, Invalid):
        if exc.field:
            return bad_request(exc.field, exc.detail, code=exc.code)
        return ApiError(exc.code, exc.detail)
    if isinstance(exc, Busy):
        return ApiError(exc.code, exc.message, status=409, headers=retry_after(exc.retry_after))
    if isinstance(exc, Backpressure):
        return ApiError(exc.code, exc.message, status=429, headers=retry_after(exc.retry_after))
    if isinstance(exc, Transient):
        return ApiError(exc.code, exc.message, status=503, headers=retry_after(exc.retry_after))
    return None


def database_error(exc: Exception) -> ApiError | None:
    """The answer to PostgreSQL's own refusals (see above); None for any other error."""
    if isinstance(exc, PoolTimeout):
        message = "no database connection free: the API is busy; retry later"
        code = "database_busy"
    elif isinstance(exc, psycopg.errors.QueryCanceled):
        message = "the database did not answer within the statement timeout; retry later"
        code = "statement_timeout"
    else:
        return None
    return ApiError(code, message, status=503, headers=retry_after(DATABASE_RETRY_AFTER_SECONDS))


MAX_RETRY_AFTER_SECONDS = 3600  # a limit of 0 per second never refills: say "an hour", not infinity


def retry_after(seconds: float | None) -> dict[str, str]:
    """``Retry-After`` in whole seconds, from 1 to an hour; no header when the wait is not known."""
    if seconds is None:
        return {}
    return {"Retry-After": str(max(1, math.ceil(min(seconds, MAX_RETRY_AFTER_SECONDS))))}


def error_response(status: int, code: str, message: str) -> web.Response:
    return json_response({"error": {"code": code, "message": message}}, status=status)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    import orjson

    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )
