"""Domain errors -> HTTP statuses, in one place. Every error body is ``{"error": {code, message}}``."""

from __future__ import annotations

from typing import Any

from aiohttp import web


class ApiError(Exception):
    status = 400

    def __init__(
        self,
        code: str,
        message: str,
        field: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ):
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


def error_response(status: int, code: str, message: str) -> web.Response:
    return json_response({"error": {"code": code, "message": message}}, status=status)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    import orjson

    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )
