"""Stripe's v2 meter event stream: up to 100 recorded meter events a request, on a session token.

``POST /v2/billing/meter_event_session`` (the secret key) returns an ``authentication_token`` valid 15
minutes; ``POST /v2/billing/meter_event_stream`` on the ``meter_events`` base address takes
``{"events": [...]}`` with that token as the key. Stripe validates the events after answering, so a
2xx means every event of the request was received; one it then refuses arrives as an error report
(``v1.billing.meter.error_report_triggered``), handled as for v1. A request may be sent again at any
time: each event carries the identifier v1 would send, and Stripe keeps one event per identifier.

Outcomes (the ``SendResult`` of client.py, for the whole request): ``delivered``; ``session_expired``
(the token ran out: a new session, then the same request again); otherwise as client.classify says.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import stripe

from stripemeter.adapters.stripe.client import SendResult, classify
from stripemeter.core.push_plan import Request
from stripemeter.domain import metrics
from stripemeter.domain.clock import Clock

if TYPE_CHECKING:
    from stripe.params.v2.billing import MeterEventStreamCreateParams, MeterEventStreamCreateParamsEvent

MAX_EVENTS = 100  # a request of the stream carries at most this many events
# a token is replaced this long before Stripe says it expires (its lifetime counted on our clock from
# when it was created, so clocks that disagree do not matter)
REFRESH_MARGIN = timedelta(minutes=2)
SESSION_EXPIRED = "billing_meter_event_session_expired"

Call = Callable[..., Awaitable[Any]]


def event_params(request: Request) -> MeterEventStreamCreateParamsEvent:
    """One recorded request as a stream event: the same identifier, name and payload as v1, the
    timestamp in RFC 3339 as v2 takes it."""
    stamp = datetime.fromtimestamp(request.timestamp, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    return {
        "identifier": request.identifier,
        "event_name": request.event_name,
        "payload": request.payload,
        "timestamp": stamp,
    }


def stream_params(requests: Sequence[Request]) -> MeterEventStreamCreateParams:
    if not 0 < len(requests) <= MAX_EVENTS:
        raise ValueError(f"a stream request carries 1 to {MAX_EVENTS} events, not {len(requests)}")
    return {"events": [event_params(r) for r in requests]}


def _instant(raw: Any) -> datetime:
    """A v2 timestamp (RFC 3339 text, or unix seconds)."""
    if isinstance(raw, int | float):
        return datetime.fromtimestamp(raw, tz=UTC)
    return datetime.fromisoformat(str(raw).replace("Z", "+00:00"))


class StreamSession:
    """The stream's authentication token: created when first needed, created again ``REFRESH_MARGIN``
    before it expires (on the injected clock) or when Stripe says it has."""

    def __init__(self, client: stripe.StripeClient, call: Call, clock: Clock):
        """``call(fn, *args)`` makes a Stripe call within the process's budget (see calls.py)."""
        self.client = client
        self.call = call
        self.clock = clock
        self._token: str | None = None
        self._refresh_at = datetime.min.replace(tzinfo=UTC)
        self.created = 0  # sessions created (tests, metrics)

    async def token(self) -> str:
        now = self.clock.utc()
        if self._token is None or now >= self._refresh_at:
            session = await self.call(self.client.v2.billing.meter_event_session.create_async)
            lifetime = _instant(session.expires_at) - _instant(session.created)
            self._token = str(session.authentication_token)
            self._refresh_at = now + lifetime - REFRESH_MARGIN
            self.created += 1
            metrics.STRIPE_STREAM_SESSIONS.inc()
        return self._token

    def expired(self) -> None:
        """Stripe refused the token as expired: the next ``token()`` creates a session."""
        self._token = None


async def send_batch(client: stripe.StripeClient, token: str, requests: Sequence[Request]) -> SendResult:
    """One stream request with the recorded requests; the outcome holds for all of them."""
    try:
        await client.v2.billing.meter_event_stream.create_async(stream_params(requests), {"api_key": token})
    except stripe.TemporarySessionExpiredError as error:
        return SendResult("transient", error.user_message or "session expired", SESSION_EXPIRED)
    except stripe.StripeError as error:
        metrics.STRIPE_ERRORS.labels(type(error).__name__).inc()
        return classify(error)
    return SendResult("delivered")
