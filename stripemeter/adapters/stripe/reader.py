"""Reading what Stripe holds: meters by event name, and event summaries per customer; and sending the
reconciler's aligning meter events.

Every call goes through the process's Stripe budget (shared with the writer) and is retried when
Stripe answers 429 or cannot be reached (see adapters/stripe/calls.py), so a busy moment does not abort a
run. A few calls run at a time; reconciling 10,000 customers is 10,000 cheap period summaries plus one
hourly listing for each customer whose totals differ.
"""

from __future__ import annotations

import asyncio
from typing import Any

import stripe

from stripemeter.adapters.stripe.budget import StripeBudget
from stripemeter.adapters.stripe.calls import StripeCalls
from stripemeter.adapters.stripe.client import SendResult, classify
from stripemeter.adapters.stripe.meters import MeterCatalog
from stripemeter.core.push_plan import Request, StripeMeterSpec, idempotency_key

PAGE = 100


class StripeReader:
    def __init__(self, client: stripe.StripeClient, budget: StripeBudget, concurrency: int = 8):
        self.client = client
        self.budget = budget
        self.call = StripeCalls(budget)
        self.slots = asyncio.Semaphore(concurrency)
        self.meters = MeterCatalog(client, self._call)

    @property
    def calls(self) -> int:
        return self.call.made

    async def _call(self, fn: Any, *args: Any) -> Any:
        async with self.slots:
            return await self.call(fn, *args)

    async def bounded(self, fn: Any, *args: Any) -> Any:
        """Any Stripe call, under the same budget, concurrency and retries as the reader's own."""
        return await self._call(fn, *args)

    async def customer_metadata(self, customer: str) -> dict[str, str] | None:
        """The Stripe customer's metadata; None when Stripe has no such customer (or it was deleted)."""
        try:
            found = await self._call(self.client.v1.customers.retrieve_async, customer)
        except stripe.InvalidRequestError as exc:
            if exc.code == "resource_missing":
                return None
            raise
        if getattr(found, "deleted", False):
            return None
        metadata = found.to_dict().get("metadata") or {}
        return {str(k): str(v) for k, v in metadata.items()}

    async def meters_by_event_name(self) -> dict[str, StripeMeterSpec]:
        """Every meter, read now: event name -> meter (active ones win)."""
        await self.meters.refresh()
        return self.meters.all()

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
            list_summaries = self.client.v1.billing.meters.event_summaries.list_async
            page = await self._call(list_summaries, meter_id, params)
            for summary in page.data:
                hours[int(summary.start_time)] = _whole(summary.aggregated_value)
            if not page.has_more or not page.data:
                return hours
            params = {**params, "starting_after": page.data[-1].id}

    async def send(self, request: Request, attempt: int = 0) -> SendResult:
        """One meter event, under the same rules as the writer's (identifier, outcomes, the attempt's
        idempotency key); 429s and lost connections are retried with the same key like every other call
        (StripeCalls)."""
        key = idempotency_key(request, attempt)
        try:
            await self._call(
                self.client.v1.billing.meter_events.create_async, request.params(), {"idempotency_key": key}
            )
        except stripe.StripeError as error:
            return classify(error)
        return SendResult("delivered")


def _whole(value: Any) -> int:
    return round(float(value or 0))
