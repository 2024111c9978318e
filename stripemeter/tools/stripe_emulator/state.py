"""The emulator's in-memory Stripe account: customers, meters, meter events, idempotency, faults,
the operations budget, error reports and the v2 events that carry them, billing (`billing.Billing`:
products, prices, test clocks, subscriptions, invoices) and the v1 events that report its changes.

Each method is one API operation: it takes the decoded params, applies the rules from `meters`,
`events` and `summaries`, and returns the JSON-ready object or raises StripeApiError. Time comes from
the injected clock (plus `clock_offset`, which `POST /_emulator/clock` moves), never from time.time()
(the operations budget and webhook signatures run on real time, see ops_budget.py and webhooks.py).
Not thread-safe; one instance per app.

`ops_per_second` is the shared budget (Stripe test mode: 25; 0 = unlimited); `async_validation`
makes meter events validate after the answer, as Stripe does (both also settable as faults).
"""

from __future__ import annotations

import copy
import fnmatch
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from stripemeter.tools.stripe_emulator import meter_events, meters, summaries, webhooks
from stripemeter.tools.stripe_emulator.billing import Billing
from stripemeter.tools.stripe_emulator.faults import TEST_MODE_OPS_PER_SECOND, Faults
from stripemeter.tools.stripe_emulator.idempotency import IdempotencyStore
from stripemeter.tools.stripe_emulator.meter_events import EventRequest, MeterEvent
from stripemeter.tools.stripe_emulator.meter_stream import Sessions, StreamLimit
from stripemeter.tools.stripe_emulator.ops_budget import OpsBudget
from stripemeter.tools.stripe_emulator.pagination import paginate
from stripemeter.tools.stripe_emulator.stripe_errors import StripeApiError, invalid, no_such, reject_unknown
from stripemeter.tools.stripe_emulator.webhooks import Delivery, Destination
from stripemeter.tools.stripe_emulator.wire import new_id

Params = dict[str, Any]
CUSTOMER_LENGTHS = {"email": 512, "name": 256, "description": 5000}


def check_customer(params: Params) -> None:
    """The shape checks of `POST /v1/customers` for the parameters the emulator keeps (the spec's)."""
    reject_unknown(params, {*CUSTOMER_LENGTHS, "metadata", "test_clock"})
    test_clock = params.get("test_clock")
    if test_clock is not None and not isinstance(test_clock, str):
        raise invalid("Invalid test_clock: must be a string.", param="test_clock")
    for name, longest in CUSTOMER_LENGTHS.items():
        value = params.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > longest):
            raise invalid(f"Invalid {name}: must be a string of at most {longest} characters.", param=name)
    metadata = params.get("metadata")
    if metadata not in (None, "") and (
        not isinstance(metadata, dict) or any(not isinstance(v, str) for v in metadata.values())
    ):
        raise invalid("Invalid metadata: must be a hash of strings, or empty.", param="metadata")


class EmulatorState:
    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        ops_per_second: float = TEST_MODE_OPS_PER_SECOND,
        async_validation: bool = False,
    ) -> None:
        self.clock = clock
        self.faults = Faults(ops_per_second=ops_per_second, async_validation=async_validation)
        self.budget = OpsBudget()
        self.wall = time.time  # real time: the per-second windows of calls (rates are about arrival)
        self.reset()

    def reset(self) -> None:
        """Forget every object, fault, error report and the webhook; the clock and settings stay."""
        self.clock_offset = 0.0
        self.faults.reset()
        self.idempotency = IdempotencyStore()
        self.webhook: Destination | None = None
        self.snapshot_webhook: Destination | None = None  # None: v1 events go to `webhook` too
        self.error_reports: list[Params] = []
        self.requests: Counter[str] = Counter()  # "METHOD /path" -> requests received (tests' numbers)
        # second of real time -> Stripe API requests received (any answer), and those answered 429
        self.calls_by_second: Counter[int] = Counter()
        self.throttled_by_second: Counter[int] = Counter()
        self.sessions = Sessions()
        self.stream_limit = StreamLimit()
        self.stream_duplicates = 0  # stream events whose identifier was taken: counted once
        self.v2_events: dict[str, Params] = {}
        self.v1_events: dict[str, Params] = {}
        self.deliveries: list[Delivery] = []
        self.outbox: list[tuple[Destination, Params, Delivery]] = []  # the server sends them
        self.customers: dict[str, Params] = {}
        self.meters: dict[str, Params] = {}
        self.events: list[MeterEvent] = []
        self._by_identifier: dict[str, MeterEvent] = {}
        # summaries read one customer of one meter; an index keeps them cheap with many customers
        self._by_meter_customer: dict[tuple[str, str], list[MeterEvent]] = {}
        self.billing = Billing(self)

    def now(self) -> float:
        return self.clock() + self.clock_offset

    def restore(self, customers: list[Params], meters: list[Params], events: list[MeterEvent]) -> None:
        """Take back a saved account's customers, meters and meter events (persistence.py)."""
        self.customers.update((c["id"], c) for c in customers)
        self.meters.update((m["id"], m) for m in meters)
        for event in events:
            self.events.append(event)
            self._by_identifier[event.identifier] = event
            self._by_meter_customer.setdefault((event.meter_id, event.customer), []).append(event)

    # --- customers ------------------------------------------------------------------------------

    def create_customer(self, params: Params) -> Params:
        """A customer; with `test_clock` it lives at that clock's time (billing.py)."""
        check_customer(params)
        test_clock = params.get("test_clock") or None
        if test_clock is not None and test_clock not in self.billing.test_clocks:
            raise no_such("test_helpers.test_clock", test_clock, param="test_clock")
        created = (
            int(self.now()) if test_clock is None else self.billing.test_clocks[test_clock]["frozen_time"]
        )
        customer: Params = {
            "id": new_id("cus"),
            "object": "customer",
            "created": created,
            "description": params.get("description"),
            "email": params.get("email"),
            "livemode": False,
            "metadata": params.get("metadata") or {},  # "" means none
            "name": params.get("name"),
            "test_clock": test_clock,
        }
        self.customers[customer["id"]] = customer
        return customer

    def get_customer(self, customer_id: str) -> Params:
        if customer_id not in self.customers:
            raise no_such("customer", customer_id)
        return self.customers[customer_id]

    def list_customers(self, params: Params, url: str) -> Params:
        reject_unknown(params, {"email", "limit", "starting_after", "ending_before"})
        items = [c for c in reversed(self.customers.values()) if params.get("email") in (None, c["email"])]
        return paginate(items, params, url)

    # --- meters ---------------------------------------------------------------------------------

    def create_meter(self, params: Params) -> Params:
        meter = meters.new_meter(params, new_id("mtr"), int(self.now()))
        if self._meter_for(meter["event_name"]) is not None:
            raise invalid(f"A meter with event_name '{meter['event_name']}' already exists.", "event_name")
        self.meters[meter["id"]] = meter
        return meter

    def get_meter(self, meter_id: str) -> Params:
        if meter_id not in self.meters:
            raise no_such("billing.meter", meter_id)
        return self.meters[meter_id]

    def list_meters(self, params: Params, url: str) -> Params:
        reject_unknown(params, {"status", "limit", "starting_after", "ending_before"})
        status = params.get("status")
        if status not in (None, "active", "inactive"):
            raise invalid("Invalid status: must be one of active, inactive", "status")
        items = [m for m in reversed(self.meters.values()) if status in (None, m["status"])]
        return paginate(items, params, url)

    def update_meter(self, meter_id: str, params: Params) -> Params:
        meter = meters.updated_meter(self.get_meter(meter_id), params, int(self.now()))
        self.meters[meter_id] = meter
        return meter

    def set_meter_status(self, meter_id: str, status: str) -> Params:
        meter = meters.with_status(self.get_meter(meter_id), status, int(self.now()))
        self.meters[meter_id] = meter
        return meter

    def _meter_for(self, event_name: str) -> Params | None:
        return next((m for m in self.meters.values() if m["event_name"] == event_name), None)

    # --- meter events ---------------------------------------------------------------------------

    def record_meter_event(self, params: Params, idempotency_key: str | None = None) -> Params:
        """`POST /v1/billing/meter_events`. By default every rule answers at once (400). In async
        validation mode only the shape and the identifier do; the event is answered 200 and then
        validated: a failing one is dropped (never counted, its identifier left free, since whether
        Stripe keeps it reserved is unknown) and becomes an error report."""
        now = self.now()
        request = meter_events.check_event_params(params)
        if not self.faults.async_validation:
            meter = self._meter_for(request.event_name)
            customer, value, timestamp = meter_events.validate_event(
                meter, request, self.customers.__contains__, now
            )
            identifier = self._free_identifier(request.identifier, now)
            assert meter is not None
            return self._store_event(meter, identifier, customer, value, request, timestamp, now).wire()
        identifier = self._free_identifier(request.identifier, now)
        timestamp = int(now) if request.timestamp is None else request.timestamp
        answer = meter_events.event_wire(request.event_name, identifier, request.payload, timestamp, now)
        meter = self._meter_for(request.event_name)
        try:
            customer, value, timestamp = meter_events.validate_event(
                meter, request, self.customers.__contains__, now
            )
        except StripeApiError as error:
            self._report_error(meter, request, error, idempotency_key or identifier, now)
            return answer
        assert meter is not None
        self._store_event(meter, identifier, customer, value, request, timestamp, now)
        return answer

    def count_call(self) -> int:
        """A Stripe API request arrived: counted in its second of real time, which is returned."""
        second = int(self.wall())
        self.calls_by_second[second] += 1
        return second

    def record_stream_events(self, requests: list[EventRequest], origin: str) -> None:
        """`POST /v2/billing/meter_event_stream` after its answer: each event is processed as Stripe
        does asynchronously. An identifier taken within 24 h (by either API) is the same event, counted
        once; an event failing validation is dropped and reported (`origin`: the request's id, named
        by the report when the event has no identifier)."""
        now = self.now()
        for request in requests:
            try:
                identifier = self._free_identifier(request.identifier, now)
            except StripeApiError:
                self.stream_duplicates += 1
                continue
            meter = self._meter_for(request.event_name)
            try:
                customer, value, timestamp = meter_events.validate_event(
                    meter, request, self.customers.__contains__, now
                )
            except StripeApiError as error:
                self._report_error(meter, request, error, request.identifier or origin, now)
                continue
            assert meter is not None
            self._store_event(meter, identifier, customer, value, request, timestamp, now)

    def _free_identifier(self, identifier: str | None, now: float) -> str:
        """The event's identifier (generated when none was sent); refused while another event has it."""
        if identifier is None:
            return str(uuid.uuid4())
        previous = self._by_identifier.get(identifier)
        if previous is not None and now - previous.received <= meter_events.IDENTIFIER_WINDOW_SECONDS:
            raise meter_events.duplicate_identifier(identifier)
        return identifier

    def _store_event(
        self,
        meter: Params,
        identifier: str,
        customer: str,
        value: int,
        request: EventRequest,
        timestamp: int,
        now: float,
    ) -> MeterEvent:
        event = MeterEvent(
            meter["id"], request.event_name, identifier, customer, value, request.payload, timestamp, now
        )
        self.events.append(event)
        self._by_identifier[identifier] = event
        self._by_meter_customer.setdefault((meter["id"], customer), []).append(event)
        return event

    # --- error reports (async validation) -------------------------------------------------------

    def _report_error(
        self,
        meter: Params | None,
        request: EventRequest,
        error: StripeApiError,
        requested_as: str,
        now: float,
    ) -> None:
        code = error.code or "meter_event_invalid_value"
        # a meter that exists but is inactive is still the related object; no meter at all is not
        meter_id = meter["id"] if meter is not None else None
        event = webhooks.error_event(new_id("evt", 24), meter_id, code, error.message, requested_as, now, now)
        self.v2_events[event["id"]] = event
        self.error_reports.append(
            {
                "code": code,
                "message": error.message,
                "meter": meter_id,
                "event_name": request.event_name,
                "identifier": requested_as,
                "received": now,
                "event": event["id"],
            }
        )
        if self.webhook is not None:
            delivery = Delivery(event["id"], self.webhook.url)
            self.deliveries.append(delivery)
            self.outbox.append((self.webhook, event, delivery))

    def set_webhook(
        self,
        url: str | None,
        secret: str | None,
        snapshot_url: str | None = None,
        snapshot_secret: str | None = None,
    ) -> None:
        """The event destination (None: none): error reports and billing events made from now on are
        sent to it; billing's v1 snapshot events go to `snapshot_url` instead when one is given."""
        self.webhook = Destination(url, secret or "") if url else None
        self.snapshot_webhook = Destination(snapshot_url, snapshot_secret or "") if snapshot_url else None

    def publish(
        self,
        type_: str,
        obj: Params,
        created: int,
        previous: Params | None = None,
        origin: tuple[str | None, str | None] = (None, None),
    ) -> Params:
        """A v1 snapshot event of `obj` as it is now, kept for `GET /v1/events` and queued for the
        destination."""
        destination = self.snapshot_webhook or self.webhook
        event = webhooks.snapshot_event(
            new_id("evt", 24),
            type_,
            copy.deepcopy(obj),
            created,
            copy.deepcopy(previous),
            origin,
            pending_webhooks=0 if destination is None else 1,
        )
        self.v1_events[event["id"]] = event
        if destination is not None:
            delivery = Delivery(event["id"], destination.url)
            self.deliveries.append(delivery)
            self.outbox.append((destination, event, delivery))
        return event

    def get_v1_event(self, event_id: str) -> Params:
        if event_id not in self.v1_events:
            raise no_such("event", event_id)
        return self.v1_events[event_id]

    def list_v1_events(self, params: Params, url: str) -> Params:
        """`GET /v1/events`, newest first; `type` may end in `*` (`invoice.*`), as Stripe's does."""
        reject_unknown(params, {"type", "limit", "starting_after", "ending_before"})
        pattern = params.get("type")
        if pattern is not None and not isinstance(pattern, str):
            raise invalid("Invalid type: must be a string.", "type")
        ordered = sorted(
            enumerate(self.v1_events.values()), key=lambda e: (e[1]["created"], e[0]), reverse=True
        )
        found = [e for _, e in ordered if pattern is None or fnmatch.fnmatchcase(e["type"], pattern)]
        return paginate(found, params, url)

    def get_v2_event(self, event_id: str) -> Params:
        if event_id not in self.v2_events:
            raise StripeApiError(404, "not_found", f"No such event: '{event_id}'", code="not_found")
        return self.v2_events[event_id]

    def cancel_meter_event(self, params: Params) -> Params:
        event_name, identifier = meter_events.check_cancel_params(params)
        if self._meter_for(event_name) is None:
            raise invalid(f"No meter was found for event_name '{event_name}'.", "event_name", "no_meter")
        found = self._by_identifier.get(identifier)
        if found is not None and found.event_name != event_name:
            found = None
        event = meter_events.check_cancellable(found, identifier, self.now())
        event.cancelled = True
        return {
            "object": "billing.meter_event_adjustment",
            "cancel": {"identifier": identifier},
            "event_name": event_name,
            "livemode": False,
            "status": "complete",
            "type": "cancel",
        }

    # --- summaries and introspection ------------------------------------------------------------

    def event_summaries(self, meter_id: str, params: Params, url: str) -> Params:
        meter = self.get_meter(meter_id)
        query = summaries.parse_query(params)
        if query.customer not in self.customers:
            raise no_such("customer", query.customer, param="customer")
        visible_before = self.now() - self.faults.summary_delay
        own = self._by_meter_customer.get((meter_id, query.customer), [])
        counted = (e for e in own if not e.cancelled and e.received <= visible_before)
        return paginate(summaries.summarize(meter, counted, query), params, url)

    def meter_total(self, meter_id: str, customer: str, start: int, end: int) -> int:
        """What the meter bills the customer for [start, end) by event timestamp, as it counts now
        (cancelled events not, events within `summary_delay` of their receipt not yet): an invoice's
        quantity."""
        meter = self.get_meter(meter_id)
        visible_before = self.now() - self.faults.summary_delay
        own = self._by_meter_customer.get((meter_id, customer), [])
        counted = [e for e in own if not e.cancelled and e.received <= visible_before]
        return summaries.period_total(meter, counted, start, end)

    def meter_events(self, meter_id: str, include_cancelled: bool = False) -> list[MeterEvent]:
        """Accepted events of one meter in receipt order (cancelled ones only when asked)."""
        return [e for e in self.events if e.meter_id == meter_id and (include_cancelled or not e.cancelled)]
