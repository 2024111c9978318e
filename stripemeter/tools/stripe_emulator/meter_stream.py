"""Stripe's v2 meter event stream: sessions, the stream's shape checks, and its own rate limit.

- `POST /v2/billing/meter_event_session` (the secret key, like any call) answers a
  `v2.billing.meter_event_session` whose `authentication_token` is valid 15 minutes (on the emulator's
  clock).
- `POST /v2/billing/meter_event_stream` takes that token as its bearer key and nothing else (a secret
  key is refused, 401): an unknown token is 401 `authentication_error`, an expired one 401
  `temporary_session_expired` / `billing_meter_event_session_expired`. The JSON body is
  `{"events": [...]}` with 1 to 100 events, each `{event_name, payload, identifier?, timestamp?}`
  (`timestamp` in RFC 3339); anything else is refused whole (400) before any event is taken. Then
  it answers `{}` and processes each event as Stripe does after answering: an identifier already
  taken (by v1 or v2, within 24 h) is the same event and counts once; an event that fails validation
  (`meter_events.validate_event`) is dropped and becomes an error report, as in async validation.
- The stream has a rate limit of its own, apart from the account's operations budget: at most
  `stream_requests_per_second` requests and `stream_events_per_second` events in any one-second window
  of real time (faults.py; Stripe documents 10,000 a second in live mode); above it, 429 `rate_limit`.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

from stripemeter.tools.stripe_emulator.meter_events import MAX_NAME_LENGTH, EventRequest
from stripemeter.tools.stripe_emulator.stripe_errors import StripeApiError, invalid
from stripemeter.tools.stripe_emulator.wire import new_id

SESSION_PATH = "/v2/billing/meter_event_session"
STREAM_PATH = "/v2/billing/meter_event_stream"
SESSION_SECONDS = 15 * 60
MAX_EVENTS = 100
EVENT_KEYS = {"event_name", "payload", "identifier", "timestamp"}


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Sessions:
    """The stream's tokens and when each expires (emulator time)."""

    def __init__(self) -> None:
        self._expires: dict[str, float] = {}

    def create(self, now: float) -> dict[str, Any]:
        token = new_id("token", 32)
        self._expires = {t: at for t, at in self._expires.items() if at > now}  # forget expired ones
        self._expires[token] = now + SESSION_SECONDS
        return {
            "id": new_id("mes", 24),
            "object": "v2.billing.meter_event_session",
            "authentication_token": token,
            "created": _rfc3339(now),
            "expires_at": _rfc3339(now + SESSION_SECONDS),
            "livemode": False,
        }

    def check(self, authorization: str, now: float) -> None:
        scheme, _, token = authorization.partition(" ")
        expires = self._expires.get(token.strip()) if scheme.lower() == "bearer" else None
        if expires is None:
            raise StripeApiError(
                401,
                "authentication_error",
                "The meter event stream takes a meter event session's authentication token"
                " (POST /v2/billing/meter_event_session).",
            )
        if now >= expires:
            raise StripeApiError(
                401,
                "temporary_session_expired",
                "The meter event session's authentication token has expired; create a new session.",
                code="billing_meter_event_session_expired",
            )


def parse_timestamp(raw: Any, param: str) -> int:
    if not isinstance(raw, str):
        raise invalid(f"Invalid {param}: must be an RFC 3339 timestamp string.", param)
    try:
        at = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise invalid(f"Invalid {param}: {raw!r} is not an RFC 3339 timestamp.", param) from None
    if at.tzinfo is None:
        raise invalid(f"Invalid {param}: {raw!r} has no time zone offset.", param)
    return int(at.timestamp())


def _event(raw: Any, at: int) -> EventRequest:
    prefix = f"events[{at}]"
    if not isinstance(raw, dict):
        raise invalid(f"Invalid {prefix}: must be an object.", prefix)
    unknown = sorted(set(raw) - EVENT_KEYS)
    if unknown:
        raise invalid(f"Received unknown parameter: {prefix}.{unknown[0]}", f"{prefix}.{unknown[0]}")
    name = raw.get("event_name")
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_LENGTH:
        raise invalid(
            f"Invalid {prefix}.event_name: a string of 1 to 100 characters.", f"{prefix}.event_name"
        )
    payload = raw.get("payload")
    if not isinstance(payload, dict) or not payload:
        raise invalid(f"Invalid {prefix}.payload: a non-empty object of strings.", f"{prefix}.payload")
    for key, value in payload.items():
        if not isinstance(value, str):
            raise invalid(f"Invalid {prefix}.payload.{key}: must be a string.", f"{prefix}.payload.{key}")
    identifier = raw.get("identifier")
    if identifier is not None and (not isinstance(identifier, str) or len(identifier) > MAX_NAME_LENGTH):
        raise invalid(
            f"Invalid {prefix}.identifier: a string of at most 100 characters.", f"{prefix}.identifier"
        )
    timestamp = raw.get("timestamp")
    stamp = None if timestamp is None else parse_timestamp(timestamp, f"{prefix}.timestamp")
    return EventRequest(name, payload, identifier or None, stamp)


def check_body(body: Any) -> list[EventRequest]:
    """The request's shape, refused whole (400) when any part is wrong."""
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.")
    unknown = sorted(set(body) - {"events"})
    if unknown:
        raise invalid(f"Received unknown parameter: {unknown[0]}", unknown[0])
    events = body.get("events")
    if not isinstance(events, list) or not events:
        raise invalid("Missing required param: events.", "events", "parameter_missing")
    if len(events) > MAX_EVENTS:
        raise invalid(f"Invalid events: at most {MAX_EVENTS} events a request, got {len(events)}.", "events")
    return [_event(raw, at) for at, raw in enumerate(events)]


class StreamLimit:
    """The stream's own rate limit, per one-second window of real time: requests and events."""

    def __init__(self) -> None:
        self.requests: Counter[int] = Counter()  # second -> requests let through
        self.events: Counter[int] = Counter()  # second -> events let through

    def take(self, second: int, events: int, max_requests: float, max_events: float) -> bool:
        """Let a request of ``events`` through in ``second``; False when it would exceed either limit
        (a limit of 0: none)."""
        if max_requests and self.requests[second] + 1 > max_requests:
            return False
        if max_events and self.events[second] + events > max_events:
            return False
        self.requests[second] += 1
        self.events[second] += events
        return True
