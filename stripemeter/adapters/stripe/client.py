"""Sending one recorded meter event request with the official `stripe` package, and what came back.

Outcomes and what the writer does with them:
- ``delivered``: 2xx, or Stripe's answer that it has an event with the identifier (it landed before):
  400 ``invalid_request_error`` with code ``resource_already_exists``, or with no code and the message
  "An event already exists with identifier ...";
- ``refused``: a 4xx about the request itself (unknown customer, inactive meter, too old): it did
  not land; the writer parks the counter with Stripe's message unless the refusal may pass later
  (``push_plan.refusal_is_temporary``: a meter or customer created a moment ago);
- ``refused_for_now``: a refusal that passes later by its code alone (``push_plan.TEMPORARY_CODES``:
  a timestamp ahead of Stripe's clock, a lock timeout, which Stripe answers with a 429): it did not
  land; sent again unchanged, under a new idempotency key (Stripe may keep the refusal for the key);
- ``idempotency_conflict``: 400 ``idempotency_error``, the key was first used with other parameters:
  the counter is parked, never retried blindly;
- ``server_error``: 5xx: may or may not have landed; retried unchanged under a new idempotency key
  (Stripe replays a 500 to the same key), the identifier stops a double count;
- ``unreachable``: no answer (a connection error or timeout; it may have been processed): retried
  with the same key, which Stripe answers from its record if it was;
- ``rate_limited``: 429: retried with the same key once the shared budget allows;
- ``transient``: anything else (409 concurrent use of the key, authentication): retried later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import stripe

from stripemeter.core.push_plan import TEMPORARY_CODES, Request, idempotency_key
from stripemeter.domain import metrics

Outcome = Literal[
    "delivered",
    "refused",
    "refused_for_now",
    "idempotency_conflict",
    "server_error",
    "unreachable",
    "rate_limited",
    "transient",
]


@dataclass(frozen=True)
class SendResult:
    outcome: Outcome
    reason: str = ""
    code: str | None = None  # Stripe's error code, when it gave one
    retry_after: float | None = None


DEFAULT_TIMEOUT_SECONDS = 10.0


def make_client(
    api_key: str,
    api_base: str,
    http_client: stripe.AIOHTTPClient | None = None,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> stripe.StripeClient:
    """A client for Stripe, or the emulator at ``api_base``; we retry ourselves (max_network_retries=0).

    Every call gives up after ``timeout`` seconds (``STRIPEMETER_STRIPE_TIMEOUT_SECONDS``; the SDK's
    own default is 80 s): an unanswered meter event is ``unreachable`` and sent again with the same
    key, a reconciliation run fails and is tried again. Pass ``http_client`` to be able to close its
    connections (``await http_client.close_async()``); it then carries its own timeout.
    """
    base = api_base.rstrip("/")
    return stripe.StripeClient(
        api_key,
        base_addresses={"api": base, "meter_events": base} if api_base else None,
        max_network_retries=0,
        http_client=http_client or stripe.AIOHTTPClient(timeout=timeout),
    )


# Stripe's documented error code for creating an object under an identifier it already has
ALREADY_EXISTS_CODE = "resource_already_exists"
# Stripe's message for a meter event identifier it has; its answer may carry no code
DUPLICATE_EVENT_MESSAGE = "an event already exists with identifier"


def _already_exists(error: stripe.InvalidRequestError) -> bool:
    """Stripe has an event under the request's identifier: it landed before. Decided on Stripe's
    structured fields when it gives a code (``resource_already_exists``, about the identifier or no
    parameter); on its message only when it gives none. Any other code is a refusal."""
    if getattr(error, "param", None) not in (None, "identifier"):
        return False
    code = code_of(error)
    if code is not None:
        return code == ALREADY_EXISTS_CODE
    return DUPLICATE_EVENT_MESSAGE in (error.user_message or "").lower()


def code_of(error: stripe.StripeError) -> str | None:
    """Stripe's error code: stripe-python keeps it on the error for a 400, in the error object for a
    429 (a lock timeout is a 429 with code ``lock_timeout``)."""
    code = getattr(error, "code", None)
    if code is None and error.error is not None:
        code = getattr(error.error, "code", None)
    return str(code) if code else None


def classify(error: stripe.StripeError) -> SendResult:
    message = (error.user_message or str(error) or type(error).__name__)[:500]
    code = code_of(error)
    status = error.http_status or 0
    if code in TEMPORARY_CODES and 400 <= status < 500:
        return SendResult("refused_for_now", message, code)
    if isinstance(error, stripe.RateLimitError):
        retry = (error.headers or {}).get("Retry-After")
        return SendResult("rate_limited", message, code, float(retry) if retry else None)
    if isinstance(error, stripe.IdempotencyError):
        if status == 409:  # another request with this key is still running
            return SendResult("transient", message, code)
        return SendResult("idempotency_conflict", message, code or "idempotency_error")
    if isinstance(error, stripe.APIConnectionError):
        return SendResult("unreachable", f"{type(error).__name__}: {message}", code)
    if isinstance(error, stripe.InvalidRequestError) and 400 <= status < 500:
        if _already_exists(error):
            return SendResult("delivered", message, code)
        return SendResult("refused", message, code)
    if status >= 500:
        return SendResult("server_error", f"{type(error).__name__} {status}: {message}", code)
    return SendResult("transient", f"{type(error).__name__}: {message}", code)


async def send(client: stripe.StripeClient, request: Request, attempt: int = 0) -> SendResult:
    """One call with the recorded request, under the attempt's idempotency key."""
    try:
        await client.v1.billing.meter_events.create_async(
            request.params(),
            {"idempotency_key": idempotency_key(request, attempt)},
        )
    except stripe.StripeError as error:
        metrics.STRIPE_ERRORS.labels(type(error).__name__).inc()
        return classify(error)
    return SendResult("delivered")
