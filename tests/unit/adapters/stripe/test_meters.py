"""The writer's meter catalog when Stripe fails: a meter read before keeps serving, an unknown one is
an error for the caller (the writer then waits for its next round)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import stripe

from stripemeter.adapters.stripe.meters import TTL_SECONDS, MeterCatalog

RAW = {
    "id": "mtr_1",
    "event_name": "api_requests",
    "status": "active",
    "default_aggregation": {"formula": "sum"},
    "customer_mapping": {"event_payload_key": "stripe_customer_id"},
    "value_settings": {"event_payload_key": "value"},
}


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_a_failing_refresh_keeps_the_meters_read_before() -> None:
    clock, failing = Clock(), {"on": False}
    calls: list[Any] = []

    async def call(fn: Any, *args: Any) -> Any:
        calls.append(args)
        if failing["on"]:
            raise stripe.APIError("Stripe is down")
        return SimpleNamespace(data=[RAW], has_more=False)

    # `call` answers for Stripe: the client's methods are named, never called
    catalog = MeterCatalog(stripe.StripeClient("sk_test_unused"), call, monotonic=clock)
    meter = await catalog.get("api_requests")
    assert meter is not None and meter.id == "mtr_1"
    failing["on"], clock.now = True, TTL_SECONDS + 1
    meter = await catalog.get("api_requests")
    assert meter is not None and meter.id == "mtr_1"
    made = len(calls)
    clock.now += 1  # not read again at once...
    await catalog.get("api_requests")
    assert len(calls) == made
    clock.now += 10  # ...but soon
    await catalog.get("api_requests")
    assert len(calls) == made + 1
    with pytest.raises(stripe.APIError):  # a meter never read: the caller must wait
        await catalog.get("tokens")
