"""Sending one meter event with the official `stripe` package, and classifying what came back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import stripe

from stripemeter import metrics
from stripemeter.stripe_push.plan import Push

Outcome = Literal["delivered", "duplicate", "permanent", "rate_limited", "transient"]


@dataclass(frozen=True)
class SendResult:
    outcome: Outcome
    reason: str = ""


def make_client(
    api_key: str, api_base: str, http_client: stripe.AIOHTTPClient | None = None
) -> stripe.StripeClient:
    """A client for Stripe, or the emulator at ``api_base``; we retry ourselves (max_network_retries=0).

    Pass ``http_client`` to be able to close its connections (``await http_client.close_async()``).
    """
    bases = {"api": api_base.rstrip("/"), "meter_events": api_base.rstrip("/")} if api_base else None
    return stripe.StripeClient(
        api_key,
        base_addresses=bases,
        max_network_retries=0,
        http_client=http_client or stripe.AIOHTTPClient(),  # type: ignore[arg-type]
    )


def classify(error: stripe.StripeError) -> SendResult:
    message = (error.user_message or str(error) or type(error).__name__)[:500]
    if isinstance(error, stripe.RateLimitError):
        return SendResult("rate_limited", message)
    if isinstance(error, stripe.InvalidRequestError):
        if "already exists" in message:
            return SendResult("duplicate", message)  # Stripe has this identifier: delivered before
        return SendResult("permanent", message)
    should_retry = (error.headers or {}).get("Stripe-Should-Retry") if hasattr(error, "headers") else None
    if isinstance(error, stripe.APIError) and should_retry == "false":
        return SendResult("permanent", message)
    # connection errors, 5xx, auth or permission problems: not this counter's fault; try again later
    return SendResult("transient", f"{type(error).__name__}: {message}")


async def send(client: stripe.StripeClient, push: Push) -> SendResult:
    try:
        await client.v1.billing.meter_events.create_async(
            {
                "event_name": push.event_name,
                "payload": push.payload,
                "identifier": push.identifier,
                "timestamp": push.timestamp,
            },
            {"idempotency_key": push.identifier},
        )
    except stripe.StripeError as error:
        metrics.STRIPE_ERRORS.labels(type(error).__name__).inc()
        return classify(error)
    return SendResult("delivered")
