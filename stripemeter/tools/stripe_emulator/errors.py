"""Stripe's error envelope as an exception.

Stripe answers every failure with `{"error": {"type", "code", "message", "param"}}` and an HTTP status;
stripe-python picks the exception class from the status (400/404 -> InvalidRequestError, or
IdempotencyError when type is `idempotency_error`; 401 -> AuthenticationError; 429 -> RateLimitError;
5xx -> APIError) and honours the `Stripe-Should-Retry` header when deciding to retry.
"""

from __future__ import annotations

from typing import Any


class StripeApiError(Exception):
    """A failed request, rendered by the server as Stripe's error envelope."""

    def __init__(
        self,
        status: int,
        type: str,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        should_retry: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.code = code
        self.param = param
        self.should_retry = should_retry

    def envelope(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code is not None:
            error["code"] = self.code
        if self.param is not None:
            error["param"] = self.param
        return {"error": error}

    def headers(self) -> dict[str, str]:
        if self.should_retry is None:
            return {}
        return {"Stripe-Should-Retry": "true" if self.should_retry else "false"}


def invalid(message: str, param: str | None = None, code: str | None = None) -> StripeApiError:
    """400 invalid_request_error, the answer to anything wrong with the request's parameters."""
    return StripeApiError(400, "invalid_request_error", message, code=code, param=param)


def no_such(kind: str, object_id: str, param: str | None = None) -> StripeApiError:
    """A missing object: 404 when it is named in the path, 400 when named by a parameter."""
    status = 404 if param is None else 400
    message = f"No such {kind}: '{object_id}'"
    return StripeApiError(status, "invalid_request_error", message, code="resource_missing", param=param)


def reject_unknown(params: dict[str, Any], allowed: set[str], prefix: str | None = None) -> None:
    """Stripe refuses parameters it does not know, which catches typos in the caller early."""
    for key in params:
        if key not in allowed and key != "expand":
            name = f"{prefix}[{key}]" if prefix else key
            raise invalid(f"Received unknown parameter: {name}", param=name, code="parameter_unknown")


def required(params: dict[str, Any], name: str, label: str | None = None) -> str:
    value = params.get(name)
    if value is None or value == "":
        param = label or name
        raise invalid(f"Missing required param: {param}.", param=param, code="parameter_missing")
    if not isinstance(value, str):
        raise invalid(f"Invalid value for {label or name}: expected a string.", param=label or name)
    return value


def parse_int(raw: Any, param: str) -> int:
    if isinstance(raw, str) and raw.lstrip("-").isdigit():
        return int(raw)
    raise invalid(f"Invalid integer: {raw!r}", param=param, code="parameter_invalid_integer")
