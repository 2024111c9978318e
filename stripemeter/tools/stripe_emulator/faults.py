"""Fault injection and account settings: the failures real Stripe produces now and then, on demand.

Where each fault strikes a request (see server.py for the whole order):

- `latency`: seconds added to every request.
- `drop_connections`: the next N connections are closed before the request reaches "Stripe": nothing
  is processed or stored (the client raises APIConnectionError; a retry runs afresh).
- `rate_limit`: the next N requests get 429 `rate_limit` (stripe-python raises RateLimitError and,
  unless told, does not retry it). Not stored for idempotency, like every 429.
- `lock_timeouts`: the next N requests get 429 `lock_timeout` with `Stripe-Should-Retry: true`, as
  Stripe answers a request for an object another request holds: nothing ran, nothing is stored.
- `server_errors`: the next N requests that start executing (their parameters passed the shape
  checks) get 500 api_error with `Stripe-Should-Retry: true`, before they change anything. Like
  Stripe, the 500 is stored under the request's idempotency key and replayed to every retry with that
  key for 24 h; a retry needs a new key (and, for meter events, the same identifier).
- `server_error_rate`: besides, each executing request gets that 500 with this probability (0 to 1).
- `landed_server_errors` / `landed_server_error_rate`: the same 500, but after the request was
  processed: the meter event was recorded (and its identifier taken), yet the answer is a 500, stored
  and replayed like any other. A retry with a new key gets 400 `resource_already_exists` ("An event
  already exists with identifier ...").
- `lost_responses`: the next N requests are fully processed (state changed, the idempotent answer
  stored) and then the connection is aborted without an answer (APIConnectionError); a retry with the
  same key gets the stored answer with `Idempotent-Replayed: true`.
- `lost_response_rate`: besides, each request loses its answer that way with this probability.
- `summary_delay`: seconds after receipt before an event counts in event summaries (Stripe
  aggregates asynchronously).

`path_prefix` limits the request faults above to paths starting with it (e.g. `/v1/billing/meter_events`).

Account settings (also set through `POST /_emulator/faults`; `reset` restores the values the state
was created with):

- `ops_per_second`: one shared budget for every `/v1/` and `/v2/` request, reads and writes together
  (Stripe test mode allows 25 operations per second); above it the answer is 429 `rate_limit`.
  0 means unlimited. Not limited by `path_prefix`.
- `async_validation`: when true, `POST /v1/billing/meter_events` checks only the request's shape and
  the identifier synchronously and validates the rest after answering 200, as Stripe does; a failing
  event is dropped and reported (see `state.EmulatorState.record_meter_event`).
- `stream_requests_per_second`, `stream_events_per_second`: the v2 meter event stream's own limit, per
  one-second window of real time (Stripe: 10,000 a second in live mode); 0 means unlimited. The stream
  does not take from `ops_per_second` (meter_stream.py).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from stripemeter.tools.stripe_emulator.stripe_errors import StripeApiError

STRIPE_PATHS = ("/v1/", "/v2/")
TEST_MODE_OPS_PER_SECOND = 25.0


@dataclass
class Faults:
    rate_limit: int = 0
    lock_timeouts: int = 0
    server_errors: int = 0
    server_error_rate: float = 0.0
    landed_server_errors: int = 0
    landed_server_error_rate: float = 0.0
    drop_connections: int = 0
    lost_responses: int = 0
    lost_response_rate: float = 0.0
    latency: float = 0.0
    summary_delay: float = 0.0
    path_prefix: str | None = None
    ops_per_second: float = TEST_MODE_OPS_PER_SECOND
    async_validation: bool = False
    stream_requests_per_second: float = 10_000.0
    stream_events_per_second: float = 10_000.0

    def __post_init__(self) -> None:
        self._initial = asdict(self)

    def applies_to(self, path: str) -> bool:
        if not path.startswith(STRIPE_PATHS):
            return False
        return self.path_prefix is None or path.startswith(self.path_prefix)

    def _take(self, path: str, count: str, rate: str | None = None) -> bool:
        """Consume one unit of the `count` fault (else roll the `rate` dice) for a request to `path`."""
        if not self.applies_to(path):
            return False
        if getattr(self, count) > 0:
            setattr(self, count, getattr(self, count) - 1)
            return True
        probability = getattr(self, rate) if rate else 0.0
        return bool(probability) and random.random() < probability

    def take_drop(self, path: str) -> bool:
        return self._take(path, "drop_connections")

    def take_rate_limit(self, path: str) -> bool:
        return self._take(path, "rate_limit")

    def take_lock_timeout(self, path: str) -> bool:
        return self._take(path, "lock_timeouts")

    def take_server_error(self, path: str) -> bool:
        return self._take(path, "server_errors", "server_error_rate")

    def take_landed_server_error(self, path: str) -> bool:
        return self._take(path, "landed_server_errors", "landed_server_error_rate")

    def take_lost_response(self, path: str) -> bool:
        return self._take(path, "lost_responses", "lost_response_rate")

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply a partial update (the JSON body of `POST /_emulator/faults`); unknown keys are refused."""
        types = {f.name: f.type for f in fields(self)}
        for key in changes:
            if key not in types:
                raise ValueError(f"unknown fault {key!r}; known: {sorted(types)}")
        for key, value in changes.items():
            if key == "path_prefix":
                if value is not None and not isinstance(value, str):
                    raise ValueError("path_prefix must be a string or null")
            elif types[key] == "bool":
                if not isinstance(value, bool):
                    raise ValueError(f"{key} must be true or false")
            elif not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{key} must be a non-negative number")
            elif types[key] == "int" and int(value) != value:
                raise ValueError(f"{key} must be a whole number")
            elif key.endswith("_rate") and value > 1:
                raise ValueError(f"{key} is a probability: 0 to 1")
        for key, value in changes.items():
            setattr(self, key, int(value) if types[key] == "int" else value)

    def reset(self) -> None:
        """Back to the values this instance was created with (no faults, the configured settings)."""
        for key, value in self._initial.items():
            setattr(self, key, value)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def rate_limited() -> StripeApiError:
    message = (
        "Request rate limit exceeded. Learn more about rate limits here https://stripe.com/docs/rate-limits."
    )
    return StripeApiError(429, "invalid_request_error", message, code="rate_limit")


def lock_timed_out() -> StripeApiError:
    message = (
        "This object cannot be accessed right now because another API request or Stripe process is"
        " currently accessing it. If you see this error intermittently, retry the request."
    )
    return StripeApiError(429, "invalid_request_error", message, code="lock_timeout", should_retry=True)


def server_error() -> StripeApiError:
    message = "An unknown error occurred (injected by the emulator)."
    return StripeApiError(500, "api_error", message, should_retry=True)
