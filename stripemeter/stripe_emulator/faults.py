"""Fault injection: the failures real Stripe produces now and then, on demand.

- `rate_limit`: the next N requests get 429 (stripe-python raises RateLimitError and, unless told,
  does not retry it).
- `server_errors`: the next N requests get 500 api_error with `Stripe-Should-Retry: true`.
- `server_error_rate`: besides, each request gets that 500 with this probability (0 to 1).
- `drop_connections`: the next N connections are closed without an answer (APIConnectionError).
- `latency`: seconds added to every request.
- `summary_delay`: seconds after receipt before an event counts in event summaries (Stripe
  aggregates asynchronously).
`path_prefix` limits the request faults to paths starting with it (e.g. `/v1/billing/meter_events`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from stripemeter.stripe_emulator.errors import StripeApiError

Fault = Literal["drop", "rate_limit", "server_error"]
STRIPE_PATHS = ("/v1/", "/v2/")


@dataclass
class Faults:
    rate_limit: int = 0
    server_errors: int = 0
    server_error_rate: float = 0.0
    drop_connections: int = 0
    latency: float = 0.0
    summary_delay: float = 0.0
    path_prefix: str | None = None

    def applies_to(self, path: str) -> bool:
        if not path.startswith(STRIPE_PATHS):
            return False
        return self.path_prefix is None or path.startswith(self.path_prefix)

    def take(self, path: str) -> Fault | None:
        """Decide the fault for one request to `path`, consuming one unit of its budget."""
        if not self.applies_to(path):
            return None
        if self.drop_connections > 0:
            self.drop_connections -= 1
            return "drop"
        if self.rate_limit > 0:
            self.rate_limit -= 1
            return "rate_limit"
        if self.server_errors > 0:
            self.server_errors -= 1
            return "server_error"
        if self.server_error_rate and random.random() < self.server_error_rate:
            return "server_error"
        return None

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply a partial update (the JSON body of `POST /_emulator/faults`); unknown keys are refused."""
        types = {f.name: f.type for f in fields(self)}
        for key, value in changes.items():
            if key not in types:
                raise ValueError(f"unknown fault {key!r}; known: {sorted(types)}")
            if key == "path_prefix":
                if value is not None and not isinstance(value, str):
                    raise ValueError("path_prefix must be a string or null")
            elif not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{key} must be a non-negative number")
            elif types[key] == "int" and int(value) != value:
                raise ValueError(f"{key} must be a whole number")
            elif key.endswith("_rate") and value > 1:
                raise ValueError(f"{key} is a probability: 0 to 1")
            setattr(self, key, int(value) if types[key] == "int" else value)

    def reset(self) -> None:
        for f in fields(self):
            setattr(self, f.name, f.default)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def fault_error(fault: Fault) -> StripeApiError:
    if fault == "rate_limit":
        message = "Request rate limit exceeded. Learn more about rate limits here https://stripe.com/docs/rate-limits."
        return StripeApiError(429, "invalid_request_error", message, code="rate_limit")
    message = "An unknown error occurred (injected by the emulator)."
    return StripeApiError(500, "api_error", message, should_retry=True)
