"""Stripe's error envelope as an exception.

Stripe answers every failure with `{"error": {"type", "code", "doc_url", "message", "param"}}` (code,
doc_url and param when they apply) and an HTTP status;
stripe-python picks the exception class from the status (400/404 -> InvalidRequestError, or
IdempotencyError when type is `idempotency_error`; 401 -> AuthenticationError; 429 -> RateLimitError;
5xx -> APIError) and honours the `Stripe-Should-Retry` header when deciding to retry.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
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
            error["doc_url"] = doc_url(self.code)
        if self.param is not None:
            error["param"] = self.param
        return {"error": error}

    def headers(self) -> dict[str, str]:
        if self.should_retry is None:
            return {}
        return {"Stripe-Should-Retry": "true" if self.should_retry else "false"}


def doc_url(code: str) -> str:
    """Stripe's page about an error code, which its error object links when it reports a code."""
    return "https://stripe.com/docs/error-codes/" + code.replace("_", "-")


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


def parse_bool(raw: Any, param: str) -> bool:
    """stripe-python sends booleans as `true` / `false`."""
    if raw in ("true", "false"):
        return bool(raw == "true")
    raise invalid(f"Invalid boolean: {raw!r}", param=param)


def parse_decimal(raw: Any, param: str) -> Decimal:
    """A decimal string with at most 12 decimal places (Stripe's `*_decimal` parameters)."""
    try:
        value = Decimal(raw) if isinstance(raw, str) and raw.strip() == raw else None
    except InvalidOperation:
        value = None
    if value is None or not value.is_finite():
        raise invalid(f"Invalid decimal: {raw!r}", param=param)
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -12:
        raise invalid(f"Invalid {param}: at most 12 decimal places are allowed.", param=param)
    return value


def decimal_text(value: Decimal) -> str:
    """A decimal as Stripe shows it: no exponent, no trailing zeros (`0.5`, `12`)."""
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "") else text


def optional_string(
    params: dict[str, Any], name: str, longest: int = 5000, label: str | None = None
) -> str | None:
    value = params.get(name)
    if value is None:
        return None
    param = label or name
    if not isinstance(value, str) or len(value) > longest:
        raise invalid(f"Invalid {param}: must be a string of at most {longest} characters.", param=param)
    return value


def check_metadata(params: dict[str, Any], name: str = "metadata") -> dict[str, str] | None:
    """A metadata hash as Stripe limits it (50 keys of at most 40 characters, values of at most 500),
    or "" (clear all); None when absent. An empty value unsets its key (see `merge_metadata`)."""
    metadata = params.get(name)
    if metadata is None:
        return None
    if metadata == "":
        return {}
    if not isinstance(metadata, dict) or any(not isinstance(v, str) for v in metadata.values()):
        raise invalid(f"Invalid {name}: must be a hash of strings, or empty.", param=name)
    if len(metadata) > 50:
        raise invalid(f"Invalid {name}: at most 50 keys are allowed.", param=name)
    for key, value in metadata.items():
        if len(key) > 40:
            raise invalid(f"Invalid {name}[{key}]: keys are at most 40 characters.", param=f"{name}[{key}]")
        if len(value) > 500:
            raise invalid(
                f"Invalid {name}[{key}]: values are at most 500 characters.", param=f"{name}[{key}]"
            )
    return metadata


def merge_metadata(current: dict[str, str], update: dict[str, str] | None) -> dict[str, str]:
    """Stripe's metadata update: keys are set, an empty value removes its key, {} (from "") clears all."""
    if update is None:
        return current
    if not update:
        return {}
    merged = {**current, **update}
    return {k: v for k, v in merged.items() if v != ""}
