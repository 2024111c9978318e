"""Stripe reads (and the reconciler's calls) within the process's budget, retried when Stripe is busy.

A 429 or a connection error pauses every caller of the budget and the call is tried again, up to
``attempts`` times; any other error goes to the caller. Meter events are not sent through here: the
writer records them first and decides per outcome (see client.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import stripe

from stripemeter.adapters.stripe.budget import StripeBudget
from stripemeter.domain import metrics

T = TypeVar("T")
ATTEMPTS = 8  # with the budget's pauses (0.5 s doubling to 5 s): about 25 s of trying


class StripeCalls:
    def __init__(self, budget: StripeBudget, attempts: int = ATTEMPTS):
        self.budget = budget
        self.attempts = attempts
        self.made = 0  # calls made, retries included

    async def __call__(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        for attempt in range(1, self.attempts + 1):
            await self.budget.acquire()
            self.made += 1
            try:
                result = await fn(*args)
            except (stripe.RateLimitError, stripe.APIConnectionError) as error:
                metrics.STRIPE_ERRORS.labels(type(error).__name__).inc()
                if attempt == self.attempts:
                    raise
                retry = (getattr(error, "headers", None) or {}).get("Retry-After")
                self.budget.slow_down(float(retry) if retry else None)
                continue
            except stripe.StripeError as error:
                metrics.STRIPE_ERRORS.labels(type(error).__name__).inc()
                raise
            self.budget.recovered()
            return result
        raise AssertionError("unreachable")
