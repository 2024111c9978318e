"""Reading what Stripe holds: meters by event name, and event summaries per customer.

Calls are rate limited and run a few at a time; reconciling 10,000 customers is 10,000 cheap period
summaries plus one hourly listing for each customer whose totals differ.
"""

from __future__ import annotations

import asyncio
from typing import Any

import stripe

from stripemeter import metrics
from stripemeter.stripe_push.client import SendResult, send
from stripemeter.stripe_push.plan import Push
from stripemeter.stripe_push.writer import RateLimiter

PAGE = 100


class StripeReader:
    def __init__(self, client: stripe.StripeClient, calls_per_second: float, concurrency: int = 8):
        self.client = client
        self.limiter = RateLimiter(calls_per_second)
        self.slots = asyncio.Semaphore(concurrency)
        self.calls = 0

    async def _call(self, fn: Any, *args: Any) -> Any:
        async with self.slots:
            await self.limiter.wait()
            self.calls += 1
            try:
                return await fn(*args)
            except stripe.StripeError as error:
                metrics.STRIPE_ERRORS.labels(type(error).__name__).inc()
                raise

    async def meters_by_event_name(self) -> dict[str, str]:
        """Active meters: event name -> meter id."""
        found: dict[str, str] = {}
        params: dict[str, Any] = {"limit": PAGE, "status": "active"}
        while True:
            page = await self._call(self.client.v1.billing.meters.list_async, params)
            for meter in page.data:
                found.setdefault(meter.event_name, meter.id)
            if not page.has_more or not page.data:
                return found
            params = {**params, "starting_after": page.data[-1].id}

    async def period_total(self, meter_id: str, customer: str, start: int, end: int) -> int:
        """One summary over [start, end): the customer's period total."""
        params = {"customer": customer, "start_time": start, "end_time": end}
        page = await self._call(self.client.v1.billing.meters.event_summaries.list_async, meter_id, params)
        return sum(_whole(s.aggregated_value) for s in page.data)

    async def hourly(self, meter_id: str, customer: str, start: int, end: int) -> dict[int, int]:
        """Hour summaries over [start, end): hour start -> value (hours without events are absent)."""
        hours: dict[int, int] = {}
        params: dict[str, Any] = {
            "customer": customer,
            "start_time": start,
            "end_time": end,
            "value_grouping_window": "hour",
            "limit": PAGE,
        }
        while True:
            page = await self._call(
                self.client.v1.billing.meters.event_summaries.list_async, meter_id, params
            )
            for summary in page.data:
                hours[int(summary.start_time)] = _whole(summary.aggregated_value)
            if not page.has_more or not page.data:
                return hours
            params = {**params, "starting_after": page.data[-1].id}

    async def send(self, push: Push) -> SendResult:
        """One meter event, as the writer sends it (same identifier rules and error classes)."""
        async with self.slots:
            await self.limiter.wait()
            self.calls += 1
            return await send(self.client, push)


def _whole(value: Any) -> int:
    return round(float(value or 0))
