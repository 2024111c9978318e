"""The emulator bills like Stripe: billing periods from the anchor, draft invoices at period ends whose
quantities follow the meter until finalization freezes them, holding with auto_advance=false, invoice
items joining one invoice, test clocks. The rules run on the account with a ManualClock (no date or
hour of the real clock matters); the routes, idempotency and signed v1 events through the real
`stripe` package."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
import stripe
from aiohttp import web
from aiohttp.test_utils import TestServer

from stripemeter.tools.stripe_emulator import EmulatorState, ManualClock, create_app, periods
from stripemeter.tools.stripe_emulator.stripe_errors import StripeApiError
from tests.unit.tools.stripe_emulator.test_emulator import Emulator, call, headers
from tests.unit.tools.stripe_emulator.test_strict import Receiver, receiving

HOUR, DAY = 3600, 86_400
SECRET = "whsec_test_billing"


def ts(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def utc(unix: int) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%S")


# --- periods ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("anchor", "interval", "count", "expected"),
    [
        # an anchor at 10:45 keeps its minute; month ends of each length, from the anchor each time
        ("2027-01-31T10:45:00", "month", 1,
         ["2027-01-31T10:45:00", "2027-02-28T10:45:00", "2027-03-31T10:45:00", "2027-04-30T10:45:00"]),
        ("2028-01-30T10:45:00", "month", 1,
         ["2028-01-30T10:45:00", "2028-02-29T10:45:00", "2028-03-30T10:45:00", "2028-04-30T10:45:00"]),
        # across New Year
        ("2026-11-30T23:59:00", "month", 1,
         ["2026-11-30T23:59:00", "2026-12-30T23:59:00", "2027-01-30T23:59:00", "2027-02-28T23:59:00"]),
        ("2026-12-31T10:45:00", "month", 2,
         ["2026-12-31T10:45:00", "2027-02-28T10:45:00", "2027-04-30T10:45:00", "2027-06-30T10:45:00"]),
        ("2028-02-29T00:00:00", "year", 1,
         ["2028-02-29T00:00:00", "2029-02-28T00:00:00", "2030-02-28T00:00:00", "2031-02-28T00:00:00"]),
        ("2026-12-31T10:45:00", "week", 1,
         ["2026-12-31T10:45:00", "2027-01-07T10:45:00", "2027-01-14T10:45:00", "2027-01-21T10:45:00"]),
        ("2026-12-31T10:45:00", "day", 3,
         ["2026-12-31T10:45:00", "2027-01-03T10:45:00", "2027-01-06T10:45:00", "2027-01-09T10:45:00"]),
    ],
)  # fmt: skip
def test_period_boundaries(anchor: str, interval: str, count: int, expected: list[str]) -> None:
    assert [utc(periods.boundary(ts(anchor), interval, count, n)) for n in range(4)] == expected
    assert periods.first_after(ts(anchor), interval, count, ts(expected[1])) == 2
    assert periods.first_after(ts(anchor), interval, count, ts(anchor) - 1) == 0


# --- the account, with a ManualClock ----------------------------------------------------------------


@dataclass
class Account:
    state: EmulatorState
    clock: ManualClock
    customer: str
    meter: str
    price: str

    @property
    def billing(self) -> Any:
        return self.state.billing

    def usage(self, value: int, at: int, identifier: str | None = None, customer: str | None = None) -> None:
        payload = {"stripe_customer_id": customer or self.customer, "value": str(value)}
        params: dict[str, Any] = {"event_name": "api_calls", "payload": payload, "timestamp": str(at)}
        if identifier:
            params["identifier"] = identifier
        self.state.record_meter_event(params)

    def at(self, unix: int) -> None:
        """The emulator's clock shows `unix`; what is due by then happens."""
        self.clock.now = float(unix)
        self.billing.run_due()

    def invoices(self, **filters: str) -> list[dict[str, Any]]:
        return list(self.billing.list_invoices({**filters, "limit": "100"}, "/v1/invoices")["data"])

    def cycle_invoices(self) -> list[dict[str, Any]]:
        """The subscription_cycle invoices, oldest first."""
        return [i for i in reversed(self.invoices()) if i["billing_reason"] == "subscription_cycle"]

    def events(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.state.v1_events.values() if e["type"] == type_]


def make_account(
    start: int,
    formula: str = "sum",
    unit: dict[str, str] | None = None,
    interval: str = "month",
    test_clock: bool = False,
) -> Account:
    clock = ManualClock(start)
    state = EmulatorState(clock=clock, ops_per_second=0)
    billing = state.billing
    customer_params: dict[str, Any] = {"email": "a@example.com"}
    if test_clock:
        customer_params["test_clock"] = billing.create_test_clock({"frozen_time": str(start)})["id"]
    customer = state.create_customer(customer_params)["id"]
    meter = state.create_meter(
        {"display_name": "API calls", "event_name": "api_calls", "default_aggregation": {"formula": formula}}
    )["id"]
    product = billing.create_product({"name": "API calls"})["id"]
    price = billing.create_price(
        {
            "currency": "usd",
            "product": product,
            **(unit or {"unit_amount": "2"}),
            "recurring": {"interval": interval, "usage_type": "metered", "meter": meter},
        }
    )["id"]
    return Account(state, clock, customer, meter, price)


def subscribe(account: Account, anchor: int | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {"customer": account.customer, "items": [{"price": account.price}]}
    if anchor is not None:
        params["billing_cycle_anchor"] = str(anchor)
    result: dict[str, Any] = account.billing.create_subscription(params)
    return result


START = ts("2026-06-15T12:00:00")
ANCHOR = ts("2026-06-30T10:45:00")  # not on an hour


def test_a_subscription_runs_from_its_start_to_the_anchor_then_anchor_to_anchor() -> None:
    account = make_account(START)
    subscription = subscribe(account, ANCHOR)
    item = subscription["items"]["data"][0]
    assert subscription["billing_cycle_anchor"] == ANCHOR and subscription["status"] == "active"
    assert (item["current_period_start"], item["current_period_end"]) == (START, ANCHOR)
    assert item["price"]["id"] == account.price and item["quantity"] is None
    # its first invoice: metered usage is billed in arrears, so 0, and paid at once
    first = account.billing.get_invoice(subscription["latest_invoice"])
    assert (first["billing_reason"], first["status"], first["total"]) == ("subscription_create", "paid", 0)
    assert first["lines"]["data"][0]["quantity"] == 0
    assert first["lines"]["data"][0]["period"] == {"start": START, "end": ANCHOR}
    account.usage(5, START + 60)
    account.at(ANCHOR - 1)
    assert account.cycle_invoices() == []
    account.at(ANCHOR + 1)
    [invoice] = account.cycle_invoices()
    assert (invoice["period_start"], invoice["period_end"], invoice["created"]) == (START, ANCHOR, ANCHOR)
    assert invoice["status"] == "draft" and invoice["auto_advance"] is True
    assert invoice["automatically_finalizes_at"] == ANCHOR + HOUR
    assert invoice["parent"]["subscription_details"]["subscription"] == subscription["id"]
    [line] = invoice["lines"]["data"]
    assert line["period"] == {"start": START, "end": ANCHOR}
    assert (line["quantity"], line["quantity_decimal"], line["amount"]) == (5, "5", 10)
    assert line["pricing"]["price_details"] == {"price": account.price, "product": item["price"]["product"]}
    assert line["parent"]["subscription_item_details"]["subscription_item"] == item["id"]
    now = account.billing.get_subscription(subscription["id"])["items"]["data"][0]
    assert (now["current_period_start"], now["current_period_end"]) == (ANCHOR, ts("2026-07-30T10:45:00"))


def test_without_an_anchor_periods_run_one_interval_from_the_start() -> None:
    account = make_account(START, interval="week")
    item = subscribe(account)["items"]["data"][0]
    assert (item["current_period_start"], item["current_period_end"]) == (START, START + 7 * DAY)


@pytest.mark.parametrize(
    ("anchor", "message"),
    [(START - 1, "in the past"), (ts("2026-07-15T12:00:01"), "next natural billing date")],
)
def test_the_anchor_is_between_now_and_one_interval_on(anchor: int, message: str) -> None:
    account = make_account(START)
    with pytest.raises(StripeApiError) as caught:
        subscribe(account, anchor)
    assert caught.value.param == "billing_cycle_anchor" and message in caught.value.message


def test_a_draft_follows_the_meter_and_finalization_freezes_it() -> None:
    account = make_account(START)
    subscribe(account, ANCHOR)
    account.usage(3, START + 60, "early")
    account.at(ANCHOR + 60)
    [draft] = account.cycle_invoices()
    assert draft["total"] == 6
    # late usage stamped inside the period counts while the invoice is a draft; usage after the
    # period does not; a cancelled event stops counting
    account.usage(4, ANCHOR - 10, "late")
    account.usage(100, ANCHOR, "next-period")
    assert account.billing.get_invoice(draft["id"])["lines"]["data"][0]["quantity"] == 7
    cancel = {"event_name": "api_calls", "type": "cancel", "cancel": {"identifier": "late"}}
    account.state.cancel_meter_event(cancel)
    assert account.billing.get_invoice(draft["id"])["total"] == 6
    account.at(ANCHOR + HOUR - 1)
    assert account.billing.get_invoice(draft["id"])["status"] == "draft"
    account.usage(2, ANCHOR - 5, "just-in-time")
    account.at(ANCHOR + HOUR)
    final = account.billing.get_invoice(draft["id"])
    assert (final["status"], final["total"], final["amount_due"]) == ("open", 10, 10)
    assert final["status_transitions"]["finalized_at"] == ANCHOR + HOUR
    assert final["automatically_finalizes_at"] is None and final["number"]
    # nothing changes a finalized invoice: neither late usage nor a cancellation
    account.usage(50, ANCHOR - 1, "too-late")
    account.state.cancel_meter_event({**cancel, "cancel": {"identifier": "just-in-time"}})
    assert account.billing.get_invoice(draft["id"]) == final
    assert account.events("invoice.finalized")[-1]["data"]["object"]["total"] == 10


@pytest.mark.parametrize(("formula", "quantity"), [("sum", 9), ("count", 3), ("last", 4)])
def test_quantities_follow_the_meters_aggregation(formula: str, quantity: int) -> None:
    account = make_account(START, formula=formula, unit={"unit_amount_decimal": "0.5"})
    subscribe(account, ANCHOR)
    account.clock.now = START + 4 * HOUR
    for value, offset in [(2, 60), (4, 3 * HOUR), (3, 120)]:
        account.usage(value, START + offset)
    account.usage(7, START - 60)  # before the subscription's period
    account.at(ANCHOR)
    [line] = account.cycle_invoices()[0]["lines"]["data"]
    assert line["quantity"] == quantity
    assert line["amount"] == int((Decimal(quantity) / 2).to_integral_value(rounding="ROUND_HALF_UP"))
    assert line["pricing"]["unit_amount_decimal"] == "0.5"


def test_auto_advance_false_holds_the_draft_until_finalized() -> None:
    account = make_account(START)
    subscribe(account, ANCHOR)
    account.usage(3, START + 60)
    account.at(ANCHOR)
    [draft] = account.cycle_invoices()
    held = account.billing.update_invoice(draft["id"], {"auto_advance": "false", "metadata": {"hold": "1"}})
    assert held["auto_advance"] is False and held["automatically_finalizes_at"] is None
    [updated] = account.events("invoice.updated")
    assert updated["data"]["previous_attributes"] == {
        "auto_advance": True,
        "automatically_finalizes_at": ANCHOR + HOUR,
        "metadata": {},
    }
    assert updated["data"]["object"]["metadata"] == {"hold": "1"}
    account.at(ANCHOR + 5 * HOUR)
    assert account.billing.get_invoice(draft["id"])["status"] == "draft"
    account.usage(2, ANCHOR - 60)
    final = account.billing.finalize_invoice(draft["id"], {"auto_advance": "true"})
    assert (final["status"], final["total"], final["auto_advance"]) == ("open", 10, True)
    assert final["status_transitions"]["finalized_at"] == ANCHOR + 5 * HOUR
    with pytest.raises(StripeApiError) as caught:
        account.billing.finalize_invoice(draft["id"], {})
    assert caught.value.status == 400 and "re-finalize" in caught.value.message


def test_auto_advance_true_again_finalizes_a_held_draft_at_once_when_its_hour_is_over() -> None:
    account = make_account(START)
    subscribe(account, ANCHOR)
    account.at(ANCHOR)
    [draft] = account.cycle_invoices()
    account.billing.update_invoice(draft["id"], {"auto_advance": "false"})
    account.at(ANCHOR + 3 * HOUR)
    again = account.billing.update_invoice(draft["id"], {"auto_advance": "true"})
    assert again["automatically_finalizes_at"] == ANCHOR + 3 * HOUR
    account.billing.run_due()
    final = account.billing.get_invoice(draft["id"])
    assert (final["status"], final["status_transitions"]["paid_at"]) == (
        "paid",
        ANCHOR + 3 * HOUR,
    )  # nothing due
    assert [e["type"] for e in account.state.v1_events.values()][-2:] == ["invoice.finalized", "invoice.paid"]
    with pytest.raises(StripeApiError) as caught:
        account.billing.update_invoice(draft["id"], {"auto_advance": "false"})
    assert caught.value.param == "auto_advance"


def test_invoice_items_join_the_next_invoice_exactly_once() -> None:
    account = make_account(START)
    subscribe(account, ANCHOR)
    billing = account.billing
    credit = billing.create_invoice_item(
        {"customer": account.customer, "currency": "usd", "amount": "-300", "description": "credit"}
    )
    fixed = billing.create_invoice_item(
        {"customer": account.customer, "currency": "usd", "unit_amount_decimal": "12.5", "quantity": "3",
         "period": {"start": str(START), "end": str(ANCHOR)}}
    )  # fmt: skip
    euros = billing.create_invoice_item({"customer": account.customer, "currency": "eur", "amount": "100"})
    assert fixed["amount"] == 38 and fixed["invoice"] is None and credit["invoice"] is None
    pending = billing.list_invoice_items(
        {"customer": account.customer, "pending": "true"}, "/v1/invoiceitems"
    )
    assert [i["id"] for i in pending["data"]] == [euros["id"], fixed["id"], credit["id"]]
    account.usage(500, START + 60)
    account.at(ANCHOR)
    [first] = account.cycle_invoices()
    assert [line["amount"] for line in first["lines"]["data"]] == [1000, -300, 38]
    assert first["total"] == 738
    assert first["lines"]["data"][2]["parent"]["invoice_item_details"]["invoice_item"] == fixed["id"]
    assert first["lines"]["data"][2]["period"] == {"start": START, "end": ANCHOR}
    assert billing.get_invoice_item(fixed["id"])["invoice"] == first["id"]
    pending = billing.list_invoice_items(
        {"customer": account.customer, "pending": "true"}, "/v1/invoiceitems"
    )
    assert [i["id"] for i in pending["data"]] == [euros["id"]]  # another currency waits
    account.at(ts("2026-07-30T10:45:00"))
    second = account.cycle_invoices()[1]
    assert [line["amount"] for line in second["lines"]["data"]] == [0]


def test_a_test_clock_advances_in_time_order_across_periods_and_month_ends() -> None:
    frozen = ts("2026-12-10T09:00:00")
    account = make_account(frozen, test_clock=True)
    billing = account.billing
    clock_id = account.state.customers[account.customer]["test_clock"]
    anchor = ts("2026-12-31T10:45:00")
    subscription = subscribe(account, anchor)
    assert subscription["test_clock"] == clock_id and subscription["start_date"] == frozen
    account.usage(2, frozen + 60)
    # the emulator's own clock moving does nothing to a test clock's customers
    account.at(frozen + 60 * DAY)
    assert account.cycle_invoices() == []
    account.clock.now = frozen  # (the meter takes events within 35 days of the emulator's time)
    answer = billing.advance_test_clock(clock_id, {"frozen_time": str(ts("2027-02-10T09:00:00"))})
    assert answer["status"] == "advancing" and answer["frozen_time"] == frozen
    assert answer["status_details"] == {"advancing": {"target_frozen_time": ts("2027-02-10T09:00:00")}}
    billing.finish_advances()
    clock = billing.get_test_clock(clock_id)
    assert (clock["status"], clock["frozen_time"]) == ("ready", ts("2027-02-10T09:00:00"))
    bounds = [(i["period_start"], i["period_end"], i["status"]) for i in account.cycle_invoices()]
    assert [(utc(a), utc(b), s) for a, b, s in bounds] == [
        ("2026-12-10T09:00:00", "2026-12-31T10:45:00", "open"),
        ("2026-12-31T10:45:00", "2027-01-31T10:45:00", "paid"),
    ]
    assert [i["total"] for i in account.cycle_invoices()] == [4, 0]
    # in time order: each invoice created at its period end, finalized an hour later
    seen = [(e["type"], utc(e["created"])) for e in account.state.v1_events.values()][3:]
    assert seen == [
        ("invoice.created", "2026-12-31T10:45:00"),
        ("invoice.finalized", "2026-12-31T11:45:00"),
        ("invoice.created", "2027-01-31T10:45:00"),
        ("invoice.finalized", "2027-01-31T11:45:00"),
        ("invoice.paid", "2027-01-31T11:45:00"),
    ]
    assert all(e["data"]["object"]["test_clock"] == clock_id for e in account.state.v1_events.values())
    # at most two intervals at a time; never backwards
    for target in (ts("2027-04-10T09:00:01"), ts("2027-02-10T09:00:00")):
        with pytest.raises(StripeApiError) as caught:
            billing.advance_test_clock(clock_id, {"frozen_time": str(target)})
        assert caught.value.param == "frozen_time"
    billing.advance_test_clock(clock_id, {"frozen_time": str(ts("2027-04-10T09:00:00"))})
    billing.run_due()
    ends = [utc(i["period_end"]) for i in account.cycle_invoices()[2:]]
    assert ends == ["2027-02-28T10:45:00", "2027-03-31T10:45:00"]
    later = billing.get_subscription(subscription["id"])["items"]["data"][0]
    assert utc(later["current_period_start"]) == "2027-03-31T10:45:00"
    assert utc(later["current_period_end"]) == "2027-04-30T10:45:00"


# --- the routes, through the `stripe` package ----------------------------------------------------


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    clock = ManualClock(START)
    state = EmulatorState(clock=clock, ops_per_second=0)
    server = TestServer(create_app(state), host="127.0.0.1")
    await server.start_server()
    yield Emulator(state, clock, f"http://127.0.0.1:{server.port}")
    await server.close()


@pytest.fixture
async def receiver(emu: Emulator) -> AsyncIterator[Receiver]:
    async with receiving(emu, SECRET) as hook:
        yield hook


async def billed(emu: Emulator, test_clock: bool = False) -> tuple[stripe.StripeClient, Any, Any]:
    """A customer (on a test clock at START when asked) subscribed to a metered price, anchored at ANCHOR."""
    client = emu.client()
    params: dict[str, Any] = {"email": "a@example.com"}
    if test_clock:
        clock = await call(client.v1.test_helpers.test_clocks.create, {"frozen_time": START, "name": "t"})
        params["test_clock"] = clock.id
    customer = await call(client.v1.customers.create, params)
    meter = await call(
        client.v1.billing.meters.create,
        {"display_name": "API calls", "event_name": "api_calls", "default_aggregation": {"formula": "sum"}},
    )
    product = await call(client.v1.products.create, {"name": "API calls"})
    price = await call(
        client.v1.prices.create,
        {
            "currency": "usd",
            "product": product.id,
            "unit_amount_decimal": Decimal("1.5"),
            "recurring": {
                "interval": "month",
                "interval_count": 1,
                "usage_type": "metered",
                "meter": meter.id,
            },
        },
    )
    subscription = await call(
        client.v1.subscriptions.create,
        {"customer": customer.id, "items": [{"price": price.id}], "billing_cycle_anchor": ANCHOR},
    )
    return client, customer, subscription


async def test_the_stripe_package_reads_the_billing_objects(emu: Emulator) -> None:
    client, customer, subscription = await billed(emu)
    item = subscription["items"].data[0]
    assert item.current_period_start == START and item.current_period_end == ANCHOR
    price = await call(client.v1.prices.retrieve, item.price.id)
    assert price.recurring is not None and price.recurring.usage_type == "metered"
    assert price.unit_amount_decimal == Decimal("1.5") and price.unit_amount is None
    listed = await call(client.v1.prices.list, {"recurring": {"meter": price.recurring.meter}})
    assert [p.id for p in listed.data] == [price.id]
    product = await call(client.v1.products.retrieve, str(price.product))
    assert product.name == "API calls"
    await call(
        client.v1.billing.meter_events.create,
        {"event_name": "api_calls", "payload": {"stripe_customer_id": customer.id, "value": "7"}},
    )
    emu.clock.now = ANCHOR
    invoices = await call(client.v1.invoices.list, {"customer": customer.id, "status": "draft"})
    [invoice] = invoices.data
    assert invoice.billing_reason == "subscription_cycle" and invoice.total == 11  # 7 x 1.5, rounded
    assert invoice.parent is not None and invoice.parent.subscription_details is not None
    assert invoice.parent.subscription_details.subscription == subscription.id
    [line] = (await call(client.v1.invoices.line_items.list, invoice.id)).data
    assert line.quantity == 7 and line.quantity_decimal == Decimal(7)
    assert line.pricing is not None and line.pricing.price_details is not None
    assert line.pricing.price_details.price == price.id
    assert line.period.start == START and line.period.end == ANCHOR
    by_subscription = await call(client.v1.invoices.list, {"subscription": subscription.id})
    assert [i.billing_reason for i in by_subscription.data] == ["subscription_cycle", "subscription_create"]
    held = await call(client.v1.invoices.update, invoice.id, {"auto_advance": False})
    assert held.auto_advance is False and held.automatically_finalizes_at is None
    final = await call(client.v1.invoices.finalize_invoice, invoice.id)
    assert final.status == "open" and final.status_transitions.finalized_at == ANCHOR
    item_ = await call(
        client.v1.invoice_items.create,
        {"customer": customer.id, "currency": "usd", "amount": 250, "description": "correction",
         "period": {"start": START, "end": ANCHOR}, "metadata": {"period": "2026-06"}},
    )  # fmt: skip
    assert item_.invoice is None and item_.amount == 250 and item_.period.end == ANCHOR
    pending = await call(client.v1.invoice_items.list, {"customer": customer.id, "pending": True})
    assert [i.id for i in pending.data] == [item_.id]
    events = await call(client.v1.events.list, {"type": "invoice.*"})
    assert [e.type for e in events.data][:2] == ["invoice.finalized", "invoice.updated"]
    event = await call(client.v1.events.retrieve, events.data[0].id)
    assert event.data.object["id"] == invoice.id


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/v1/invoices/in_missing", "invoice"),
        ("/v1/invoices/in_missing/lines", "invoice"),
        ("/v1/prices/price_missing", "price"),
        ("/v1/products/prod_missing", "product"),
        ("/v1/subscriptions/sub_missing", "subscription"),
        ("/v1/test_helpers/test_clocks/clock_missing", "test_helpers.test_clock"),
        ("/v1/invoiceitems/ii_missing", "invoiceitem"),
        ("/v1/events/evt_missing", "event"),
    ],
)
async def test_unknown_ids_are_404_resource_missing(emu: Emulator, path: str, kind: str) -> None:
    client = emu.client()
    with pytest.raises(stripe.InvalidRequestError) as caught:
        await call(client.raw_request, "get", path)  # (raw: no service of the package checks the id)
    assert caught.value.http_status == 404 and caught.value.code == "resource_missing"
    assert f"No such {kind}" in str(caught.value)


@pytest.mark.parametrize(
    ("path", "params", "param"),
    [
        ("/v1/products", {}, "name"),
        ("/v1/products", {"name": "x", "colour": "red"}, "colour"),
        ("/v1/prices", {"currency": "usd", "product": "PRODUCT"}, "unit_amount"),
        ("/v1/prices",
         {"currency": "usd", "product": "PRODUCT", "unit_amount": 1, "unit_amount_decimal": "1"},
         "unit_amount_decimal"),
        ("/v1/prices", {"currency": "usd", "product": "PRODUCT", "unit_amount": 1,
                        "recurring": {"interval": "month", "usage_type": "metered"}}, "recurring[meter]"),
        ("/v1/prices", {"currency": "usd", "product": "PRODUCT", "unit_amount": 1,
                        "recurring": {"interval": "fortnight"}}, "recurring[interval]"),
        ("/v1/prices", {"currency": "usd", "product": "PRODUCT", "unit_amount": 1,
                        "recurring": {"interval": "month", "usage_type": "metered", "meter": "mtr_missing"}},
         "recurring[meter]"),
        ("/v1/prices", {"currency": "usd", "product": "prod_missing", "unit_amount": 1}, "product"),
        ("/v1/test_helpers/test_clocks", {"name": "x"}, "frozen_time"),
        ("/v1/customers", {"test_clock": "clock_missing"}, "test_clock"),
        ("/v1/subscriptions", {"customer": "CUSTOMER"}, "items"),
        ("/v1/subscriptions", {"customer": "CUSTOMER", "items": [{"price": "price_missing"}]},
         "items[0][price]"),
        ("/v1/subscriptions", {"customer": "CUSTOMER", "items": [{"price": "PRICE", "quantity": 1}]},
         "items[0][quantity]"),
        ("/v1/invoiceitems", {"customer": "CUSTOMER", "amount": 1}, "currency"),
        ("/v1/invoiceitems", {"customer": "CUSTOMER", "currency": "usd"}, "amount"),
        ("/v1/invoiceitems",
         {"customer": "CUSTOMER", "currency": "usd", "amount": 1, "pricing": {"price": "PRICE"}}, "pricing"),
        ("/v1/invoiceitems", {"customer": "CUSTOMER", "pricing": {"price": "PRICE"}}, "pricing[price]"),
        ("/v1/invoiceitems", {"customer": "CUSTOMER", "currency": "usd", "amount": 1,
                              "period": {"start": 2, "end": 1}}, "period[end]"),
        ("/v1/invoices/INVOICE", {"auto_advance": "maybe"}, "auto_advance"),
        ("/v1/invoices/INVOICE", {"description": "x"}, "description"),
    ],
)  # fmt: skip
async def test_malformed_requests_are_400_naming_the_param(
    emu: Emulator, path: str, params: dict[str, Any], param: str
) -> None:
    client, customer, subscription = await billed(emu)
    ids = {
        "PRODUCT": subscription["items"].data[0].price.product,
        "PRICE": subscription["items"].data[0].price.id,
        "CUSTOMER": customer.id,
        "INVOICE": subscription.latest_invoice,
    }

    def fill(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fill(v) for v in value]
        return ids.get(value, value) if isinstance(value, str) else value

    with pytest.raises(stripe.InvalidRequestError) as caught:
        await call(lambda: client.raw_request("post", fill(path), **fill(params)))
    assert caught.value.http_status == 400 and caught.value.param == param, caught.value


async def test_posts_are_idempotent(emu: Emulator) -> None:
    client, customer, _ = await billed(emu)
    params = {"customer": customer.id, "currency": "usd", "amount": 100}
    options: Any = {"idempotency_key": "item-1"}
    first = await call(client.v1.invoice_items.create, params, options)
    again = await call(client.v1.invoice_items.create, params, options)
    assert again.id == first.id and again.last_response is not None
    assert again.last_response.headers["Idempotent-Replayed"] == "true"
    assert len(emu.state.billing.invoice_items) == 1
    with pytest.raises(stripe.IdempotencyError):
        await call(client.v1.invoice_items.create, {**params, "amount": 101}, options)
    clock = await call(
        client.v1.test_helpers.test_clocks.create, {"frozen_time": START}, {"idempotency_key": "c"}
    )
    replayed = await call(
        client.v1.test_helpers.test_clocks.create, {"frozen_time": START}, {"idempotency_key": "c"}
    )
    assert replayed.id == clock.id and len(emu.state.billing.test_clocks) == 1


async def test_faults_reach_the_billing_routes(emu: Emulator) -> None:
    client, customer, _ = await billed(emu)
    emu.state.faults.update({"server_errors": 1, "path_prefix": "/v1/invoiceitems"})
    params = {"customer": customer.id, "currency": "usd", "amount": 100}
    with pytest.raises(stripe.APIError) as caught:
        await call(client.v1.invoice_items.create, params, {"idempotency_key": "k"})
    assert headers(caught.value)["Stripe-Should-Retry"] == "true"
    assert emu.state.billing.invoice_items == {}


async def test_a_test_clock_answers_advancing_then_is_ready(emu: Emulator) -> None:
    client, customer, subscription = await billed(emu, test_clock=True)
    clock_id = customer.test_clock
    assert subscription.test_clock == clock_id
    advanced = await call(
        client.v1.test_helpers.test_clocks.advance, clock_id, {"frozen_time": ANCHOR + 2 * HOUR}
    )
    assert advanced.status == "advancing" and advanced.frozen_time == START
    assert advanced.status_details.advancing is not None
    assert advanced.status_details.advancing.target_frozen_time == ANCHOR + 2 * HOUR
    await asyncio.sleep(0.05)  # the advance finishes in the background, with no request needed
    assert emu.state.billing.test_clocks[clock_id]["status"] == "ready"
    clock = await call(client.v1.test_helpers.test_clocks.retrieve, clock_id)
    assert clock.status == "ready" and clock.frozen_time == ANCHOR + 2 * HOUR
    [invoice, _] = (await call(client.v1.invoices.list, {"customer": customer.id})).data
    assert invoice.status == "paid" and invoice.created == ANCHOR and invoice.test_clock == clock_id


async def test_invoice_events_are_signed_snapshots(emu: Emulator, receiver: Receiver) -> None:
    receiver.failures = 1  # the first delivery fails: it is sent again
    client, customer, subscription = await billed(emu)
    emu.clock.now = ANCHOR
    await call(client.v1.customers.retrieve, customer.id)  # any request: the period has ended
    deliveries = await receiver.delivered(5)
    assert len(deliveries) == 5  # subscription_create: created, finalized, paid (one retried); cycle: created
    verifier = stripe.StripeClient("sk_test_x")
    parsed = [verifier.construct_event(body, signature, SECRET) for body, signature in deliveries[1:]]
    assert sorted(e.type for e in parsed) == [
        "invoice.created",
        "invoice.created",
        "invoice.finalized",
        "invoice.paid",
    ]
    cycle = next(e for e in parsed if e.data.object["billing_reason"] == "subscription_cycle")
    assert cycle.created == ANCHOR and cycle.api_version == stripe.api_version and cycle.livemode is False
    assert (
        cycle.data.object["status"] == "draft"
        and cycle.data.object["automatically_finalizes_at"] == ANCHOR + HOUR
    )
    assert cycle.request is not None and cycle.request.id is None
    assert cycle.data.object["parent"]["subscription_details"]["subscription"] == subscription.id
    with pytest.raises(stripe.SignatureVerificationError):
        verifier.construct_event(deliveries[1][0], deliveries[1][1], "whsec_other")
    async with (  # the emulator's clock moves: what is due happens, no Stripe request needed
        aiohttp.ClientSession() as session,
        session.post(emu.url + "/_emulator/clock", json={"advance": HOUR}) as moved,
    ):
        assert (await moved.json())["now"] == ANCHOR + HOUR
    last = [
        verifier.construct_event(body, signature, SECRET)
        for body, signature in (await receiver.delivered(7))[5:]
    ]
    assert sorted(e.type for e in last) == ["invoice.finalized", "invoice.paid"]  # nothing was used: 0, paid
    assert {e.created for e in last} == {ANCHOR + HOUR}


async def test_snapshot_events_can_go_to_a_destination_of_their_own(
    emu: Emulator, receiver: Receiver
) -> None:
    other = Receiver()
    app = web.Application()
    app.router.add_post("/billing", other.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        url = f"http://127.0.0.1:{server.port}/billing"
        settings = {"url": receiver.url, "secret": SECRET, "snapshot_url": url, "snapshot_secret": "whsec_b"}
        async with (
            aiohttp.ClientSession() as session,
            session.post(emu.url + "/_emulator/webhook", json=settings) as r,
        ):
            assert r.status == 200 and (await r.json())["snapshot_url"].endswith("/billing")
        await billed(emu)
        body, signature = (await other.delivered(3))[0]
        event = stripe.StripeClient("sk_test_x").construct_event(body, signature, "whsec_b")
        assert event.type == "invoice.created" and receiver.received == []
    finally:
        await server.close()
