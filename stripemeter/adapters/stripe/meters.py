"""Stripe's meters by event name: how to send to each (its payload keys) and whether it can carry a
metric at all (see ``plan.meter_problem``). Read with ``meters.list`` and kept for a minute; a name
not found is looked for again after a few seconds (a meter created meanwhile). Before a meter problem
parks a counter, ``fresh`` reads them again (at most once a second): the operator may have fixed the
meter a moment ago."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import stripe

from stripemeter.core.push_plan import StripeMeterSpec

log = logging.getLogger(__name__)

PAGE = 100
TTL_SECONDS = 60.0
MISSING_RECHECK_SECONDS = 5.0
FRESH_SECONDS = 1.0

Call = Callable[..., Awaitable[Any]]


def meter_of(raw: Any) -> StripeMeterSpec:
    """A Stripe meter object (or its JSON) as a StripeMeterSpec."""

    def field(obj: Any, name: str) -> Any:
        return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)

    customer = field(raw, "customer_mapping") or {}
    value = field(raw, "value_settings") or {}
    aggregation = field(raw, "default_aggregation") or {}
    return StripeMeterSpec(
        id=field(raw, "id"),
        event_name=field(raw, "event_name"),
        formula=field(aggregation, "formula") or "sum",
        customer_key=field(customer, "event_payload_key") or "stripe_customer_id",
        value_key=field(value, "event_payload_key") or "value",
        active=field(raw, "status") == "active",
        event_time_window=field(raw, "event_time_window"),
    )


class MeterCatalog:
    def __init__(
        self, client: stripe.StripeClient, call: Call, monotonic: Callable[[], float] = time.monotonic
    ):
        """``call(fn, *args)`` makes a Stripe call within the process's budget (see budget.py)."""
        self.client = client
        self.call = call
        self.monotonic = monotonic
        self._meters: dict[str, StripeMeterSpec] = {}
        self._read_at = -TTL_SECONDS

    async def get(self, event_name: str) -> StripeMeterSpec | None:
        age = self.monotonic() - self._read_at
        if age > TTL_SECONDS or (event_name not in self._meters and age > MISSING_RECHECK_SECONDS):
            try:
                await self.refresh()
            except stripe.StripeError as exc:
                if event_name not in self._meters:
                    raise
                # Stripe is failing: the meter as last read still says how to send; read again soon
                self._read_at = self.monotonic() - TTL_SECONDS + MISSING_RECHECK_SECONDS
                log.warning("reading Stripe's meters failed (%s); using them as read before", exc)
        return self._meters.get(event_name)

    async def fresh(self, event_name: str, max_age: float = FRESH_SECONDS) -> StripeMeterSpec | None:
        """The meter as Stripe lists it now: read again unless read within ``max_age`` seconds, so any
        number of callers cost at most one read a ``max_age``. A failing read raises (the caller
        decides nothing on a stale catalog)."""
        if self.monotonic() - self._read_at > max_age:
            await self.refresh()
        return self._meters.get(event_name)

    def all(self) -> dict[str, StripeMeterSpec]:
        """The meters as last read: event name -> meter."""
        return dict(self._meters)

    def invalidate(self) -> None:
        self._read_at = -TTL_SECONDS

    async def refresh(self) -> None:
        found: dict[str, StripeMeterSpec] = {}
        params: dict[str, Any] = {"limit": PAGE}
        while True:
            page = await self.call(self.client.v1.billing.meters.list_async, params)
            for raw in page.data:
                meter = meter_of(raw)
                # one active meter per event name; an inactive one only if no active one has it
                if meter.active or meter.event_name not in found:
                    found[meter.event_name] = meter
            if not page.has_more or not page.data:
                break
            params = {**params, "starting_after": page.data[-1].id}
        self._meters = found
        self._read_at = self.monotonic()
