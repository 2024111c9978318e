"""The account's billing: products, prices, test clocks, subscriptions, invoices and invoice items,
and what happens as time passes.

Time. A customer lives at its test clock's `frozen_time`, or at the emulator's clock (`state.now()`,
which `POST /_emulator/clock` moves); its subscriptions, invoices and invoice items are stamped
with that time. Everything due up to a clock's time happens in time order, each at the moment it is
due (an invoice made at a period end is `created` at the period end): for the emulator's clock
before every request and once a second (`run_due`), for a test clock when it advances
(`finish_advances`, right after the advance answered `status: "advancing"`).

Subscriptions bill metered prices only (all of one currency and interval). The first period runs
from the subscription's start (the customer's time) to the billing cycle anchor (default: the start,
then one interval on), then from anchor to anchor (periods.py). Creating one makes its first
invoice (`billing_reason: "subscription_create"`, one line per item with quantity 0, since metered
usage is billed in arrears), finalized at once: `paid` when it is 0. At each period end:

- a **draft** invoice, `billing_reason: "subscription_cycle"`, `period_start` / `period_end` the
  period that ended, one line per item over that period with the meter's aggregate for the customer
  over [start, end) by event timestamp (sum, count or last, pre-aggregated meters as in summaries),
  `auto_advance: true` and `automatically_finalizes_at` an hour after creation; the customer's
  pending invoice items in its currency join it (each joins exactly one invoice);
- the subscription moves to the next period.

A draft's quantities follow the meter (events that arrive late, or are cancelled, while it is a
draft count as the meter counts them then). Finalization, automatic once `automatically_finalizes_at`
has passed while `auto_advance` is true, or `POST /v1/invoices/{id}/finalize`, reads the meter one
last time and freezes the invoice: nothing changes it afterwards. `auto_advance: false` holds a draft
past `automatically_finalizes_at` (which then shows null); setting it true again schedules
finalization at the later of creation + 1 h and now. Finalized invoices are `open`, or `paid` when
nothing is due; payments, dunning and the 72 h wait for `invoice.created` deliveries are not emulated.

Each change is a v1 snapshot event (`invoice.created`, `invoice.updated`, `invoice.finalized`,
`invoice.paid`), published through the state to the event destination.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stripemeter.tools.stripe_emulator import catalog, invoices, periods, test_clocks
from stripemeter.tools.stripe_emulator.pagination import paginate
from stripemeter.tools.stripe_emulator.stripe_errors import (
    check_metadata,
    invalid,
    merge_metadata,
    no_such,
    parse_int,
    reject_unknown,
    required,
)
from stripemeter.tools.stripe_emulator.wire import new_id

if TYPE_CHECKING:
    from stripemeter.tools.stripe_emulator.state import EmulatorState

Params = dict[str, Any]
Origin = tuple[str | None, str | None]  # the request's id and idempotency key
AUTOMATIC: Origin = (None, None)
MAX_ITEMS = 20
SUBSCRIPTION_PARAMS = {"customer", "items", "billing_cycle_anchor", "metadata"}


@dataclass
class Subscription:
    wire: Params
    anchor: int
    interval: str
    count: int
    cycle: int  # the current period ends at the anchor's `cycle`-th boundary

    @property
    def customer(self) -> str:
        return str(self.wire["customer"])

    @property
    def period(self) -> tuple[int, int]:
        item = self.wire["items"]["data"][0]
        return item["current_period_start"], item["current_period_end"]


@dataclass
class UsageLine:
    """A line of one metered subscription item; `quantity` None follows the meter until finalized."""

    line_id: str
    item: Params
    period: tuple[int, int]
    quantity: int | None


@dataclass
class ItemLine:
    """The line of one invoice item."""

    line_id: str
    item_id: str


@dataclass
class Invoice:
    wire: Params
    sources: list[UsageLine | ItemLine]
    lines: list[Params]
    frozen: bool = False


def check_subscription(params: Params) -> Params:
    """The shape checks of `POST /v1/subscriptions` (the parts the emulator bills)."""
    reject_unknown(params, SUBSCRIPTION_PARAMS)
    customer = required(params, "customer")
    items = params.get("items")
    if items is None or items == "":
        raise invalid("Missing required param: items.", "items", "parameter_missing")
    if not isinstance(items, list) or any(not isinstance(i, dict) for i in items):
        raise invalid("Invalid items: must be a list of objects (items[0][price]).", "items")
    if not 1 <= len(items) <= MAX_ITEMS:
        raise invalid(f"Invalid items: a subscription has 1 to {MAX_ITEMS} items.", "items")
    prices = []
    for n, item in enumerate(items):
        reject_unknown(item, {"price", "metadata"}, prefix=f"items[{n}]")
        prices.append(required(item, "price", f"items[{n}][price]"))
        check_metadata(item, "metadata")
    anchor = params.get("billing_cycle_anchor")
    return {
        "customer": customer,
        "prices": prices,
        "item_metadata": [merge_metadata({}, check_metadata(i)) for i in items],
        "anchor": None if anchor is None else parse_int(anchor, "billing_cycle_anchor"),
        "metadata": merge_metadata({}, check_metadata(params)),
    }


def _setting(price: Params, key: str) -> Any:
    return price["currency"] if key == "currency" else price["recurring"][key]


class Billing:
    def __init__(self, account: EmulatorState) -> None:
        self.account = account
        self.products: dict[str, Params] = {}
        self.prices: dict[str, Params] = {}
        self.test_clocks: dict[str, Params] = {}
        self.subscriptions: dict[str, Subscription] = {}
        self.invoices: dict[str, Invoice] = {}
        self.invoice_items: dict[str, Params] = {}
        self.advancing: dict[str, int] = {}  # test clock -> the frozen_time it advances to
        self._numbers: Counter[str] = Counter()
        self._order = itertools.count()
        self._created: dict[str, int] = {}  # invoice -> creation order (lists: newest first)

    # --- time ------------------------------------------------------------------------------------

    def clock_of(self, customer: str) -> str | None:
        clock = self.account.customers[customer].get("test_clock")
        return None if clock is None else str(clock)

    def time_for(self, customer: str) -> int:
        """The customer's time: its test clock's frozen time, else the emulator's clock."""
        clock = self.clock_of(customer)
        return int(self.test_clocks[clock]["frozen_time"]) if clock else int(self.account.now())

    def run_due(self) -> None:
        """Finish advancing test clocks; then do what the emulator's clock has made due."""
        self.finish_advances()
        self._run(None, int(self.account.now()))

    def finish_advances(self) -> None:
        for clock_id, target in list(self.advancing.items()):
            self._run(clock_id, target)
            del self.advancing[clock_id]
            self.test_clocks[clock_id] = test_clocks.ready(self.test_clocks[clock_id], target)

    def _run(self, clock: str | None, until: int) -> None:
        while (due := self._next_due(clock, until)) is not None:
            at, kind, object_id = due
            if kind == 0:
                self._finalize(self.invoices[object_id], at, AUTOMATIC)
            else:
                self._cycle(self.subscriptions[object_id], at)

    def _next_due(self, clock: str | None, until: int) -> tuple[int, int, str] | None:
        """(time, kind, id) of the earliest thing due on `clock` by `until`: at one instant, drafts are
        finalized (kind 0) before periods end (kind 1)."""
        due: list[tuple[int, int, str]] = []
        for invoice_id, invoice in self.invoices.items():
            wire = invoice.wire
            at = wire["automatically_finalizes_at"]
            drafted = wire["status"] == "draft" and wire["auto_advance"] and at is not None
            if drafted and at <= until and self.clock_of(wire["customer"]) == clock:
                due.append((at, 0, invoice_id))
        for subscription_id, subscription in self.subscriptions.items():
            end = subscription.period[1]
            if end <= until and self.clock_of(subscription.customer) == clock:
                due.append((end, 1, subscription_id))
        return min(due, default=None)

    # --- products and prices --------------------------------------------------------------------

    def create_product(self, params: Params) -> Params:
        product = catalog.new_product(params, new_id("prod"), int(self.account.now()))
        self.products[product["id"]] = product
        return product

    def get_product(self, product_id: str) -> Params:
        if product_id not in self.products:
            raise no_such("product", product_id)
        return self.products[product_id]

    def create_price(self, params: Params) -> Params:
        settings = catalog.check_price(params)
        if settings["product"] not in self.products:
            raise no_such("product", settings["product"], param="product")
        meter = (settings["recurring"] or {}).get("meter")
        if meter is not None and meter not in self.account.meters:
            raise no_such("billing.meter", meter, param="recurring[meter]")
        price = catalog.new_price(settings, new_id("price"), int(self.account.now()))
        self.prices[price["id"]] = price
        return price

    def get_price(self, price_id: str) -> Params:
        if price_id not in self.prices:
            raise no_such("price", price_id)
        return self.prices[price_id]

    def list_prices(self, params: Params, url: str) -> Params:
        wanted = catalog.check_price_list(params)
        found = [p for p in reversed(self.prices.values()) if catalog.price_matches(p, wanted)]
        return paginate(found, params, url)

    # --- test clocks ----------------------------------------------------------------------------

    def create_test_clock(self, params: Params) -> Params:
        frozen_time, name = test_clocks.check_create(params)
        clock = test_clocks.new_clock(new_id("clock"), frozen_time, name, int(self.account.now()))
        self.test_clocks[clock["id"]] = clock
        return clock

    def get_test_clock(self, clock_id: str) -> Params:
        if clock_id not in self.test_clocks:
            raise no_such("test_helpers.test_clock", clock_id)
        return self.test_clocks[clock_id]

    def advance_test_clock(self, clock_id: str, params: Params) -> Params:
        target = test_clocks.check_advance(params)
        clock = self.get_test_clock(clock_id)
        if clock["status"] != "ready":
            raise invalid(f"The test clock {clock_id} is advancing: wait until its status is ready.")
        if target <= clock["frozen_time"]:
            raise invalid(
                f"Invalid frozen_time: {target} must be later than the test clock's frozen_time "
                f"({clock['frozen_time']}).",
                "frozen_time",
            )
        limit = self._advance_limit(clock_id, clock["frozen_time"])
        if limit is not None and target > limit:
            raise invalid(
                f"Invalid frozen_time: a test clock advances at most two intervals of its shortest "
                f"subscription interval at a time (here up to {limit}).",
                "frozen_time",
            )
        self.test_clocks[clock_id] = test_clocks.advancing(clock, target)
        self.advancing[clock_id] = target
        return self.test_clocks[clock_id]

    def _advance_limit(self, clock_id: str, frozen_time: int) -> int | None:
        limits = [
            periods.boundary(frozen_time, s.interval, s.count, 2)
            for s in self.subscriptions.values()
            if self.clock_of(s.customer) == clock_id
        ]
        return min(limits, default=None)

    # --- subscriptions --------------------------------------------------------------------------

    def create_subscription(self, params: Params, origin: Origin = AUTOMATIC) -> Params:
        settings = check_subscription(params)
        customer = settings["customer"]
        if customer not in self.account.customers:
            raise no_such("customer", customer, param="customer")
        prices = []
        for n, price_id in enumerate(settings["prices"]):
            price = self.prices.get(price_id)
            if price is None:
                raise no_such("price", price_id, param=f"items[{n}][price]")
            if (price["recurring"] or {}).get("usage_type") != "metered":
                raise invalid(
                    f"The emulator bills metered prices only: {price_id} is not a metered recurring price.",
                    f"items[{n}][price]",
                )
            if not price["active"]:
                raise invalid(f"The price {price_id} is not active.", f"items[{n}][price]")
            prices.append(price)
        first = prices[0]
        for n, price in enumerate(prices):
            for key in ("currency", "interval", "interval_count"):
                if _setting(price, key) != _setting(first, key):
                    raise invalid(
                        "Currency and interval fields must match across all prices on a subscription: "
                        f"{price['id']} differs from {first['id']} in {key}.",
                        f"items[{n}][price]",
                    )
        interval, count = first["recurring"]["interval"], first["recurring"]["interval_count"]
        now = self.time_for(customer)
        anchor = now if settings["anchor"] is None else settings["anchor"]
        if anchor < now:
            raise invalid(
                f"Invalid billing_cycle_anchor: {anchor} is in the past (the customer's time is {now}).",
                "billing_cycle_anchor",
            )
        natural = periods.boundary(now, interval, count, 1)
        if anchor > natural:
            raise invalid(
                f"billing_cycle_anchor cannot be later than next natural billing date ({natural}) for plan.",
                "billing_cycle_anchor",
            )
        cycle = periods.first_after(anchor, interval, count, now)
        end = periods.boundary(anchor, interval, count, cycle)
        subscription_id = new_id("sub")
        items = [
            {
                "id": new_id("si"),
                "object": "subscription_item",
                "billed_until": None,
                "billing_thresholds": None,
                "created": now,
                "current_period_end": end,
                "current_period_start": now,
                "discounts": [],
                "metadata": metadata,
                "price": price,
                "quantity": None,  # metered items have none
                "subscription": subscription_id,
                "tax_rates": [],
            }
            for price, metadata in zip(prices, settings["item_metadata"], strict=True)
        ]
        clock = self.clock_of(customer)
        wire = {
            "id": subscription_id,
            "object": "subscription",
            "application": None,
            "application_fee_percent": None,
            "automatic_tax": {"disabled_reason": None, "enabled": False, "liability": None},
            "billing_cycle_anchor": anchor,
            "billing_cycle_anchor_config": None,
            "billing_mode": {"flexible": None, "type": "flexible", "updated_at": now},
            "billing_schedules": [],
            "billing_thresholds": None,
            "cancel_at": None,
            "cancel_at_period_end": False,
            "canceled_at": None,
            "cancellation_details": {"comment": None, "feedback": None, "reason": None},
            "collection_method": "charge_automatically",
            "created": now,
            "currency": first["currency"],
            "customer": customer,
            "customer_account": None,
            "days_until_due": None,
            "default_payment_method": None,
            "default_source": None,
            "default_tax_rates": [],
            "description": None,
            "discounts": [],
            "ended_at": None,
            "invoice_settings": {"account_tax_ids": None, "issuer": {"type": "self"}},
            "items": {
                "object": "list",
                "data": items,
                "has_more": False,
                "total_count": len(items),
                "url": f"/v1/subscription_items?subscription={subscription_id}",
            },
            "latest_invoice": None,
            "livemode": False,
            "metadata": settings["metadata"],
            "next_pending_invoice_item_invoice": None,
            "on_behalf_of": None,
            "pause_collection": None,
            "payment_settings": {
                "payment_method_options": None,
                "payment_method_types": None,
                "save_default_payment_method": "off",
            },
            "pending_invoice_item_interval": None,
            "pending_setup_intent": None,
            "pending_update": None,
            "schedule": None,
            "start_date": now,
            "status": "active",
            "test_clock": clock,
            "transfer_data": None,
            "trial_end": None,
            "trial_settings": {"end_behavior": {"missing_payment_method": "create_invoice"}},
            "trial_start": None,
        }
        subscription = Subscription(wire, anchor, interval, count, cycle)
        self.subscriptions[subscription_id] = subscription
        first_invoice = self._create_invoice(
            subscription, "subscription_create", (now, now), (now, end), 0, now, origin
        )
        self._finalize(first_invoice, now, origin)
        return wire

    def get_subscription(self, subscription_id: str) -> Params:
        if subscription_id not in self.subscriptions:
            raise no_such("subscription", subscription_id)
        return self.subscriptions[subscription_id].wire

    def _cycle(self, subscription: Subscription, at: int) -> None:
        """The period ending at `at` ends: its draft invoice, then the next period."""
        start, end = subscription.period
        self._create_invoice(
            subscription, "subscription_cycle", (start, end), (start, end), None, at, AUTOMATIC
        )
        subscription.cycle += 1
        following = periods.boundary(
            subscription.anchor, subscription.interval, subscription.count, subscription.cycle
        )
        for item in subscription.wire["items"]["data"]:
            item["current_period_start"], item["current_period_end"] = end, following

    # --- invoices -------------------------------------------------------------------------------

    def _create_invoice(
        self,
        subscription: Subscription,
        reason: str,
        period: tuple[int, int],
        line_period: tuple[int, int],
        quantity: int | None,
        at: int,
        origin: Origin,
    ) -> Invoice:
        customer = self.account.customers[subscription.customer]
        invoice_id = new_id("in")
        wire = invoices.new_invoice(invoice_id, customer, subscription.wire, reason, period, at)
        sources: list[UsageLine | ItemLine] = [
            UsageLine(new_id("il"), item, line_period, quantity)
            for item in subscription.wire["items"]["data"]
        ]
        for item in self.invoice_items.values():
            if (
                item["customer"] == customer["id"]
                and item["invoice"] is None
                and item["currency"] == wire["currency"]
            ):
                item["invoice"] = invoice_id
                sources.append(ItemLine(new_id("il"), item["id"]))
        invoice = Invoice(wire, sources, [])
        self.invoices[invoice_id] = invoice
        self._created[invoice_id] = next(self._order)
        subscription.wire["latest_invoice"] = invoice_id
        self._refresh(invoice)
        self._publish("invoice.created", invoice, at, origin)
        return invoice

    def _refresh(self, invoice: Invoice) -> None:
        """A draft's lines as the meter shows them now (a finalized invoice is left as it is)."""
        if invoice.frozen:
            return
        lines = []
        for source in invoice.sources:
            if isinstance(source, ItemLine):
                item = self.invoice_items[source.item_id]
                lines.append(invoices.item_line(source.line_id, invoice.wire["id"], item))
                continue
            price = source.item["price"]
            quantity = source.quantity
            if quantity is None:
                start, end = source.period
                quantity = self.account.meter_total(
                    price["recurring"]["meter"], invoice.wire["customer"], start, end
                )
            product = self.products[price["product"]]["name"]
            description = f"{quantity} x {product}"
            lines.append(
                invoices.subscription_line(
                    source.line_id,
                    invoice.wire["id"],
                    source.item,
                    price,
                    source.period,
                    quantity,
                    description,
                )
            )
        invoice.lines = lines
        invoice.wire = invoices.with_lines(invoice.wire, lines)

    def _finalize(self, invoice: Invoice, at: int, origin: Origin, auto_advance: bool | None = None) -> None:
        self._refresh(invoice)
        invoice.frozen = True
        customer = invoice.wire["customer"]
        self._numbers[customer] += 1
        number = f"{customer[-8:].upper()}-{self._numbers[customer]:04d}"
        invoice.wire = invoices.finalized(invoice.wire, at, number)
        if auto_advance is not None:
            invoice.wire["auto_advance"] = auto_advance
        self._publish("invoice.finalized", invoice, at, origin)
        if invoice.wire["status"] == "paid":
            self._publish("invoice.paid", invoice, at, origin)

    def _publish(
        self, type_: str, invoice: Invoice, at: int, origin: Origin, previous: Params | None = None
    ) -> None:
        self.account.publish(type_, invoice.wire, at, previous, origin)

    def _invoice(self, invoice_id: str) -> Invoice:
        if invoice_id not in self.invoices:
            raise no_such("invoice", invoice_id)
        invoice = self.invoices[invoice_id]
        self._refresh(invoice)
        return invoice

    def get_invoice(self, invoice_id: str) -> Params:
        return self._invoice(invoice_id).wire

    def list_invoices(self, params: Params, url: str) -> Params:
        wanted = invoices.check_list(params)
        newest = sorted(
            self.invoices, key=lambda i: (self.invoices[i].wire["created"], self._created[i]), reverse=True
        )
        found = []
        for invoice_id in newest:
            wire = self.invoices[invoice_id].wire
            subscription = wire["parent"]["subscription_details"]["subscription"]
            if wanted.get("customer", wire["customer"]) != wire["customer"]:
                continue
            if wanted.get("subscription", subscription) != subscription:
                continue
            if wanted.get("status", wire["status"]) != wire["status"]:
                continue
            found.append(self._invoice(invoice_id).wire)
        return paginate(found, params, url)

    def invoice_lines(self, invoice_id: str, params: Params, url: str) -> Params:
        invoices.check_lines_list(params)
        return paginate(self._invoice(invoice_id).lines, params, url)

    def update_invoice(self, invoice_id: str, params: Params, origin: Origin = AUTOMATIC) -> Params:
        changes = invoices.check_update(params)
        invoice = self._invoice(invoice_id)
        wire, status = invoice.wire, invoice.wire["status"]
        now = self.time_for(wire["customer"])
        previous: Params = {}
        updated = dict(wire)
        if "auto_advance" in changes:
            if status not in ("draft", "open"):
                raise invalid(
                    f"auto_advance can only be changed on draft and open invoices; {invoice_id} is {status}.",
                    "auto_advance",
                )
            if changes["auto_advance"] != wire["auto_advance"]:
                previous["auto_advance"] = wire["auto_advance"]
                updated["auto_advance"] = changes["auto_advance"]
                if status == "draft":
                    previous["automatically_finalizes_at"] = wire["automatically_finalizes_at"]
                    updated["automatically_finalizes_at"] = (
                        max(wire["created"] + invoices.FINALIZATION_GRACE_SECONDS, now)
                        if changes["auto_advance"]
                        else None
                    )
        if "metadata" in changes:
            metadata = merge_metadata(wire["metadata"], changes["metadata"])
            if metadata != wire["metadata"]:
                previous["metadata"] = wire["metadata"]
                updated["metadata"] = metadata
        invoice.wire = updated
        if previous:
            self._publish("invoice.updated", invoice, now, origin, previous)
        return invoice.wire

    def finalize_invoice(self, invoice_id: str, params: Params, origin: Origin = AUTOMATIC) -> Params:
        auto_advance = invoices.check_finalize(params)
        invoice = self._invoice(invoice_id)
        if invoice.wire["status"] != "draft":
            raise invalid("This invoice is already finalized, you can't re-finalize a non-draft invoice.")
        self._finalize(invoice, self.time_for(invoice.wire["customer"]), origin, auto_advance)
        return invoice.wire

    # --- invoice items --------------------------------------------------------------------------

    def create_invoice_item(self, params: Params) -> Params:
        settings = invoices.check_invoice_item(params)
        customer = settings["customer"]
        if customer not in self.account.customers:
            raise no_such("customer", customer, param="customer")
        price = None
        if settings["price"] is not None:
            price = self.prices.get(settings["price"])
            if price is None:
                raise no_such("price", settings["price"], param="pricing[price]")
            if price["type"] != "one_time":
                raise invalid(
                    "The price specified is set to `type=recurring` but this field only accepts prices with "
                    "`type=one_time`.",
                    "pricing[price]",
                )
            if settings["currency"] not in (None, price["currency"]):
                raise invalid(
                    f"Invalid currency: the price {price['id']} is in {price['currency']}.", "currency"
                )
        item = invoices.new_invoice_item(
            new_id("ii"), settings, price, self.time_for(customer), self.clock_of(customer)
        )
        self.invoice_items[item["id"]] = item
        return item

    def get_invoice_item(self, item_id: str) -> Params:
        if item_id not in self.invoice_items:
            raise no_such("invoiceitem", item_id)
        return self.invoice_items[item_id]

    def list_invoice_items(self, params: Params, url: str) -> Params:
        wanted = invoices.check_invoice_item_list(params)
        found = [
            item
            for item in reversed(self.invoice_items.values())
            if wanted.get("customer", item["customer"]) == item["customer"]
            and wanted.get("invoice", item["invoice"]) == item["invoice"]
            and wanted.get("pending", item["invoice"] is None) == (item["invoice"] is None)
        ]
        return paginate(found, params, url)
