"""Every request this project sends to Stripe, checked against Stripe's own stripe-mock (which validates
parameters against Stripe's OpenAPI spec), and the project's emulator accepting and refusing requests
as stripe-mock does. Billing's requests (products, metered prices, test clocks, subscriptions,
invoices, invoice items, events) are the shapes the emulator's billing clients send.

stripe-mock (`go install github.com/stripe/stripe-mock@latest`; `./dev test` installs it) runs once
for this module on loopback ports of its own. Requests go through the real `stripe` client
(max_network_retries=0), and the project's shapes through the project's own code where it has it:
the writer's `send` (identifiers, payload, timestamp, Idempotency-Key) and the reconciler's
`StripeReader` (meter listing, period totals, hour summaries).

stripe-mock answers errors without a `param`; its message names the parameter ("object property
'payload' validation failed: object property for 'a' ..."), which is what the emulator's `param`
is compared with. stripe-mock keeps no state, so the emulator's account is set up for state-dependent
checks to pass (the customer, the meters and the pagination cursors exist).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest
import pytest_asyncio
import stripe
from aiohttp.test_utils import TestServer

from stripemeter.adapters.stripe.budget import StripeBudget
from stripemeter.adapters.stripe.client import make_client, send
from stripemeter.adapters.stripe.reader import StripeReader
from stripemeter.core.push_plan import Request as MeterEvent
from stripemeter.core.push_plan import Row, StripeMeterSpec, new_request, next_timestamp, targets
from stripemeter.core.reconcile_compare import Item
from stripemeter.services.reconciliation.act import correction_identifier
from stripemeter.tools.stripe_emulator import EmulatorState, create_app

if TYPE_CHECKING:
    from stripe.params import (
        CustomerCreateParams,
        InvoiceItemCreateParams,
        InvoiceListParams,
        InvoiceUpdateParams,
        PriceCreateParams,
        ProductCreateParams,
        SubscriptionCreateParams,
    )
    from stripe.params.billing import (
        MeterCreateParams,
        MeterEventCreateParams,
        MeterEventSummaryListParams,
        MeterListParams,
        MeterRetrieveParams,
    )

INSTALL = "go install github.com/stripe/stripe-mock@latest"
KEY = "sk_test_emulatorspec"  # stripe-mock wants sk_test_<one part>
HOUR = 3600
NOW = int(time.time())
THIS_HOUR = NOW - NOW % HOUR
# period bounds keep the billing anchor's minute (reconcile/periods.py); hour summaries take hours
PERIOD = (THIS_HOUR - 20 * 86400 + 17 * 60, THIS_HOUR + 10 * 86400 + 17 * 60)
HOURS = (THIS_HOUR - 20 * 86400, THIS_HOUR + HOUR)
CUSTOM_KEYS = {"customer_mapping": "account", "value_settings": "units"}
# billing: test clocks start on this minute; subscriptions are anchored a day and 45 minutes on
CLOCK_START = NOW - NOW % 60
CLOCK_ANCHOR = CLOCK_START + 86400 + 45 * 60


# --- the two servers ------------------------------------------------------------------------------


def stripe_mock_binary() -> str:
    found = shutil.which("stripe-mock")
    if found:
        return found
    go = shutil.which("go")
    if go is not None:
        gopath = subprocess.run([go, "env", "GOPATH"], capture_output=True, text=True, check=False).stdout
        for root in gopath.strip().split(":"):
            candidate = Path(root, "bin", "stripe-mock")
            if root and candidate.is_file():
                return str(candidate)
    pytest.fail(
        "stripe-mock is not installed (looked on PATH and in $(go env GOPATH)/bin): `./dev test` installs "
        f"it with Go >= 1.22, or run `{INSTALL}`. This test checks the emulator against Stripe's spec.",
        pytrace=False,
    )


@pytest.fixture(scope="module")
def stripe_mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """stripe-mock over HTTP on a free loopback port (`-http-port` would bind every address), and its
    HTTPS listener, which it starts unless told where, on another (never the default 12112)."""
    binary = stripe_mock_binary()
    log = tmp_path_factory.mktemp("stripe-mock") / "stripe-mock.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, "-http-addr", "127.0.0.1:0", "-https-addr", "127.0.0.1:0"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while (
            found := re.search(r"Listening for HTTP at address: 127\.0\.0\.1:(\d+)", log.read_text())
        ) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"stripe-mock ({binary}) did not start:\n{log.read_text()}", pytrace=False)
            time.sleep(0.05)
        yield f"http://127.0.0.1:{found.group(1)}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Server:
    """One Stripe look-alike and the ids that exist on it (on stripe-mock any id does)."""

    name: str
    client: stripe.StripeClient
    customer: str = ""
    event_name: str = ""  # the demo's meter: default payload keys, all settings spelled out
    meter: str = ""
    custom_event_name: str = ""  # a meter with custom payload keys
    custom_meter: str = ""
    summary: str = "mtrusg_mock"  # an hour summary of the demo's meter, as a cursor
    # billing (see setup_billing): a metered price of the demo's meter, a test clock, a customer on it
    # with a subscription, and two of its subscriptions' draft invoices (one to update, one to finalize)
    product: str = ""
    price: str = ""
    test_clock: str = ""
    clock_customer: str = ""
    subscription: str = ""
    invoice: str = ""
    draft: str = ""

    async def outcome(self, request: Callable[[stripe.StripeClient], Awaitable[Any]]) -> Outcome:
        try:
            await request(self.client)
        except stripe.StripeError as error:
            json_body = error.json_body or {}
            assert isinstance(json_body, dict)  # stripe types it as object
            body = json_body.get("error", {})
            message = body.get("message", str(error))
            param = body.get("param") if self.name == "emulator" else mock_param(message)
            return Outcome(error.http_status or 0, param, message, body.get("code"))
        return Outcome(200, None, "")


@dataclass(frozen=True)
class Outcome:
    status: int
    param: str | None
    message: str
    code: str | None = None

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300


def mock_param(message: str) -> str | None:
    """The parameter a stripe-mock message names: "object property 'a' ...: object property for 'b'"
    is `a[b]`; for an unknown parameter ("additional properties are not allowed") it names the hash
    holding it, or nothing at the top level."""
    names = re.findall(r"object property (?:for )?'([^']+)'", message)
    return names[0] + "".join(f"[{n}]" for n in names[1:]) if names else None


@pytest_asyncio.fixture(scope="module")
async def servers(stripe_mock: str) -> AsyncIterator[tuple[Server, Server]]:
    state = EmulatorState(ops_per_second=0)  # not about the rate limit; the real clock
    emulator = TestServer(create_app(state), host="127.0.0.1")
    await emulator.start_server()
    http = [stripe.AIOHTTPClient(), stripe.AIOHTTPClient()]
    mock = Server("stripe-mock", make_client(KEY, stripe_mock, http[0]))
    emu = Server("emulator", make_client(KEY, f"http://127.0.0.1:{emulator.port}", http[1]))
    try:
        for server in (mock, emu):
            await setup(server)
            await setup_billing(server)
        yield mock, emu
    finally:
        for client in http:
            await client.close_async()  # type: ignore[no-untyped-call]  # stripe leaves it unannotated
        await emulator.close()


# --- the project's own requests -------------------------------------------------------------------


def create_customer(client: stripe.StripeClient) -> Awaitable[Any]:
    """What the demo and the tests send to make a customer."""
    return client.v1.customers.create_async({"email": f"{uuid.uuid4().hex[:8]}@example.com"})


def meter_params(event_name: str, keys: dict[str, str] | None = None) -> MeterCreateParams:
    """The demo's meter: every setting spelled out (default keys unless `keys`)."""
    keys = keys or {"customer_mapping": "stripe_customer_id", "value_settings": "value"}
    return {
        "display_name": "API requests",
        "event_name": event_name,
        "default_aggregation": {"formula": "sum"},
        "customer_mapping": {"type": "by_id", "event_payload_key": keys["customer_mapping"]},
        "value_settings": {"event_payload_key": keys["value_settings"]},
    }


def pushes(event_name: str, customer: str, keys: dict[str, str] | None = None) -> list[MeterEvent]:
    """The writer's and the reconciler's meter events, built by the project's own planning code:
    positive, negative and carried differences, a `last` value, and a reconciliation correction."""
    tag = uuid.uuid4().hex[:8]
    customer_key, value_key = (
        (keys["customer_mapping"], keys["value_settings"]) if keys else ("stripe_customer_id", "value")
    )
    sums = StripeMeterSpec("mtr_x", event_name, "sum", customer_key, value_key, True, None)
    lasts = StripeMeterSpec("mtr_y", event_name, "last", customer_key, value_key, True, None)

    def row(metric: str, hour: int, micros: int, pushed: int, version: int) -> Row:
        bucket = datetime.fromtimestamp(hour, tz=UTC)
        return Row(
            (f"t-{tag}", metric, "acme", bucket), micros, pushed, "waiting", version, 0, None, None, 0, 0
        )

    # two hours of one period: 1 and 25 units; then the second is corrected down to 22.5 (a negative
    # change of 3: the half unit carries on)
    hours = [
        row("requests", THIS_HOUR - 2 * HOUR, 1_000_000, 0, 9),
        row("requests", THIS_HOUR - HOUR, 25_000_000, 0, 3),
    ]
    wanted = targets("sum", [r.latest_micros for r in hours])
    made = [new_request(r, t, "sum", sums, customer) for r, t in zip(hours, wanted, strict=True)]
    lowered = row("requests", THIS_HOUR - HOUR, 22_500_000, 25, 4)
    made.append(new_request(lowered, targets("sum", [1_000_000, 22_500_000])[1], "sum", sums, customer))
    made.append(new_request(row("seats", THIS_HOUR - HOUR, 22_000_000, 25, 4), 22, "last", lasts, customer))
    # the hour drops to 0: a second request of the hour, stamped one second after the first
    dropped = replace(row("seats", THIS_HOUR - HOUR, 0, 22, 5), holds=True, last_timestamp=THIS_HOUR - HOUR)
    stamp = next_timestamp(dropped, "last", THIS_HOUR, NOW)
    assert stamp == THIS_HOUR - HOUR + 1
    made.append(new_request(dropped, 0, "last", lasts, customer, stamp))
    assert [p.payload[value_key] for p in made] == ["1", "25", "-3", "22", "0"]
    assert all(re.fullmatch(r"sm_[0-9a-f]{24}_\d+", p.identifier) for p in made)
    run_id = "rec_" + uuid.uuid4().hex[:20]  # as reconcile/runner.py names a run
    correction = correction_identifier(
        Item(f"t-{tag}", "requests", "acme", "sum"), THIS_HOUR - 2 * HOUR, run_id
    )
    assert re.fullmatch(r"smrec_[0-9a-f]{24}_rec_[0-9a-f]{20}", correction)
    payload = {customer_key: customer, value_key: "-2"}
    made.append(MeterEvent(correction, event_name, payload, THIS_HOUR - 2 * HOUR, -2, -2))
    return made


async def setup(server: Server) -> None:
    """The account: a customer, the meters (the demo's, one with custom keys, the tests' short form)
    and two hours of usage whose summaries give a cursor - on stripe-mock the same requests, which it
    must accept (it answers fixtures: its ids are only placeholders)."""
    tag = uuid.uuid4().hex[:8]
    server.customer = (await create_customer(server.client)).id
    server.event_name, server.custom_event_name = f"sm_requests_{tag}", f"sm_custom_{tag}"
    server.meter = (await server.client.v1.billing.meters.create_async(meter_params(server.event_name))).id
    custom = meter_params(server.custom_event_name, CUSTOM_KEYS)
    server.custom_meter = (await server.client.v1.billing.meters.create_async(custom)).id
    # the tests' shorter form (tests/integration/stripe_helpers.py)
    plain: MeterCreateParams = {
        "display_name": "requests",
        "event_name": f"req_{tag}",
        "default_aggregation": {"formula": "sum"},
    }
    await server.client.v1.billing.meters.create_async(plain)
    for push in pushes(server.event_name, server.customer):
        result = await send(server.client, push)
        assert result.outcome == "delivered", (server.name, push, result)
    params: MeterEventSummaryListParams = {
        "customer": server.customer,
        "start_time": HOURS[0],
        "end_time": HOURS[1],
    }
    page = await server.client.v1.billing.meters.event_summaries.list_async(
        server.meter, {**params, "value_grouping_window": "hour", "limit": 100}
    )
    if server.name == "emulator":
        assert [s.aggregated_value for s in page.data] == [25 - 3 + 22.0, 1 - 2.0]
        server.summary = page.data[0].id


# --- billing: what the emulator's billing clients send -------------------------------------------


def product_params() -> ProductCreateParams:
    return {"name": "API requests", "metadata": {"stripemeter": "test"}}


def price_params(product: str, meter: str) -> PriceCreateParams:
    """A metered price of a meter, per unit in fractions of a cent."""
    return {
        "currency": "usd",
        "product": product,
        "unit_amount_decimal": Decimal("0.25"),
        "recurring": {"interval": "month", "interval_count": 1, "usage_type": "metered", "meter": meter},
    }


def subscription_params(customer: str, price: str, anchor: int = CLOCK_ANCHOR) -> SubscriptionCreateParams:
    return {"customer": customer, "items": [{"price": price}], "billing_cycle_anchor": anchor}


async def clock_customer(client: stripe.StripeClient, test_clock: str) -> str:
    params: CustomerCreateParams = {"email": f"{uuid.uuid4().hex[:8]}@example.com", "test_clock": test_clock}
    return (await client.v1.customers.create_async(params)).id


async def setup_billing(server: Server) -> None:
    """A product, a metered price of the demo's meter, a test clock with two customers subscribed
    (anchored a day on), advanced past the anchor: on the emulator each subscription then has a draft
    invoice (stripe-mock answers fixtures)."""
    client = server.client
    server.product = (await client.v1.products.create_async(product_params())).id
    server.price = (await client.v1.prices.create_async(price_params(server.product, server.meter))).id
    clocks = client.v1.test_helpers.test_clocks
    server.test_clock = (await clocks.create_async({"frozen_time": CLOCK_START, "name": "billing"})).id
    subscriptions = []
    for _ in range(2):
        customer = await clock_customer(client, server.test_clock)
        params = subscription_params(customer, server.price)
        subscriptions.append(await client.v1.subscriptions.create_async(params))
    await clocks.advance_async(server.test_clock, {"frozen_time": CLOCK_ANCHOR + 60})
    if server.name != "emulator":
        server.clock_customer, server.subscription = "cus_mock", "sub_mock"
        server.invoice = server.draft = "in_mock"
        return
    server.clock_customer, server.subscription = str(subscriptions[0].customer), subscriptions[0].id
    deadline = time.monotonic() + 10
    while (await clocks.retrieve_async(server.test_clock)).status != "ready":
        assert time.monotonic() < deadline, "the test clock did not finish advancing"
    drafts = []
    for subscription in subscriptions:
        listed = await client.v1.invoices.list_async({"subscription": subscription.id, "status": "draft"})
        assert [i.billing_reason for i in listed.data] == ["subscription_cycle"], listed
        drafts.append(listed.data[0].id)
    server.invoice, server.draft = drafts


def billing(step: Callable[[Server, stripe.StripeClient], Awaitable[Any]]) -> Request:
    return lambda server: lambda client: step(server, client)


def price(change: dict[str, Any] | None = None, drop: tuple[str, ...] = ()) -> Request:
    async def step(server: Server, client: stripe.StripeClient) -> Any:
        params: dict[str, Any] = {**price_params(server.product, server.meter), **(change or {})}
        for key in drop:
            params.pop(key)
        return await client.v1.prices.create_async(cast("PriceCreateParams", params))

    return billing(step)


async def advance_a_new_clock(server: Server, client: stripe.StripeClient) -> Any:
    clocks = client.v1.test_helpers.test_clocks
    clock = await clocks.create_async({"frozen_time": CLOCK_START})
    return await clocks.advance_async(clock.id, {"frozen_time": CLOCK_START + 3600})


async def subscribe_with_anchor(server: Server, client: stripe.StripeClient) -> Any:
    """A customer of a new test clock, subscribed with a billing cycle anchor a day and 45 minutes on."""
    clock = await client.v1.test_helpers.test_clocks.create_async({"frozen_time": CLOCK_START})
    customer = await clock_customer(client, clock.id)
    return await client.v1.subscriptions.create_async(subscription_params(customer, server.price))


def invoice_item(params: dict[str, Any]) -> Request:
    async def step(server: Server, client: stripe.StripeClient) -> Any:
        full = {"customer": server.clock_customer, **params}
        return await client.v1.invoice_items.create_async(cast("InvoiceItemCreateParams", full))

    return billing(step)


def invoices_list(params: dict[str, Any]) -> Request:
    async def step(server: Server, client: stripe.StripeClient) -> Any:
        ids = {"CUSTOMER": server.clock_customer, "SUBSCRIPTION": server.subscription}
        full = {k: ids.get(v, v) if isinstance(v, str) else v for k, v in params.items()}
        return await client.v1.invoices.list_async(cast("InvoiceListParams", full))

    return billing(step)


def invoice_update(params: dict[str, Any]) -> Request:
    async def step(server: Server, client: stripe.StripeClient) -> Any:
        return await client.v1.invoices.update_async(server.invoice, cast("InvoiceUpdateParams", params))

    return billing(step)


CORRECTION_PERIOD = {"start": CLOCK_START, "end": CLOCK_ANCHOR}
CORRECTION = {"currency": "usd", "amount": -250, "description": "correction", "period": CORRECTION_PERIOD,
              "metadata": {"stripemeter": "x"}}  # fmt: skip
BY_DECIMAL = {
    "currency": "usd",
    "unit_amount_decimal": Decimal("0.25"),
    "quantity": 40,
    "period": CORRECTION_PERIOD,
}
# what services/invoice_guard.py sends to carry usage counted after an invoice was finalized
CARRY = {"currency": "usd", "quantity": 30, "unit_amount_decimal": "2", "description": "used in 2026-11",
         "metadata": {"stripemeter_invoice": "in_x", "stripemeter_line": "il_x"}}  # fmt: skip
WHOLE_CENTS = {"unit_amount": 3}


async def finalize(server: Server, client: stripe.StripeClient) -> Any:
    return await client.v1.invoices.finalize_invoice_async(server.draft, {"auto_advance": True})


def clock_create(params: dict[str, Any]) -> Request:
    return billing(lambda s, c: c.v1.test_helpers.test_clocks.create_async(cast("Any", params)))


BILLING_SENT: list[tuple[str, Request]] = [
    ("product", billing(lambda s, c: c.v1.products.create_async(product_params()))),
    ("product, retrieved", billing(lambda s, c: c.v1.products.retrieve_async(s.product))),
    ("metered price of a meter", price()),
    ("metered price, whole cents", price(WHOLE_CENTS, drop=("unit_amount_decimal",))),
    ("price, retrieved", billing(lambda s, c: c.v1.prices.retrieve_async(s.price))),
    ("prices of a meter", billing(lambda s, c: c.v1.prices.list_async({"recurring": {"meter": s.meter}}))),
    ("test clock", clock_create({"frozen_time": CLOCK_START, "name": "a clock"})),
    ("test clock, advanced", billing(advance_a_new_clock)),
    ("test clock, retrieved",
     billing(lambda s, c: c.v1.test_helpers.test_clocks.retrieve_async(s.test_clock))),
    ("customer on a test clock", billing(lambda s, c: clock_customer(c, s.test_clock))),
    ("subscription with a billing cycle anchor", billing(subscribe_with_anchor)),
    ("subscription, retrieved", billing(lambda s, c: c.v1.subscriptions.retrieve_async(s.subscription))),
    ("invoice, retrieved", billing(lambda s, c: c.v1.invoices.retrieve_async(s.invoice))),
    ("invoices of a customer, drafts",
     invoices_list({"customer": "CUSTOMER", "status": "draft", "limit": 100})),
    ("invoices of a subscription", invoices_list({"subscription": "SUBSCRIPTION"})),
    ("invoice lines",
     billing(lambda s, c: c.v1.invoices.line_items.list_async(s.invoice, {"limit": 100}))),
    ("invoice held: auto_advance false", invoice_update({"auto_advance": False})),
    ("invoice metadata", invoice_update({"metadata": {"stripemeter_checked": "1"}})),
    ("invoice handed back: auto_advance true", invoice_update({"auto_advance": True})),
    ("invoice finalized", billing(finalize)),
    ("invoice item, an amount", invoice_item(CORRECTION)),
    ("invoice item, a decimal unit amount", invoice_item(BY_DECIMAL)),
    ("invoice item, the guard's carry of unbilled usage", invoice_item(CARRY)),
    ("pending invoice items",
     billing(lambda s, c: c.v1.invoice_items.list_async({"customer": s.clock_customer, "pending": True}))),
    ("invoice events",
     billing(lambda s, c: c.v1.events.list_async({"type": "invoice.created", "limit": 100}))),
]  # fmt: skip

BILLING_MALFORMED: list[tuple[str, Request]] = [
    ("price, unknown parameter", price({"colour": "red"})),
    ("price, interval fortnight", price({"recurring": {"interval": "fortnight"}})),
    ("price, unit_amount not a number", price({"unit_amount": "abc"}, drop=("unit_amount_decimal",))),
    ("test clock, no frozen_time", clock_create({"name": "x"})),
    ("test clock advance, no frozen_time",
     billing(lambda s, c: c.v1.test_helpers.test_clocks.advance_async(s.test_clock, cast("Any", {})))),
    ("invoices, status bogus", invoices_list({"status": "held"})),
    ("invoice, auto_advance not a boolean", invoice_update({"auto_advance": "maybe"})),
    ("invoice finalize, unknown parameter",
     billing(lambda s, c: c.v1.invoices.finalize_invoice_async(s.draft, cast("Any", {"colour": "red"})))),
    ("invoice item, price (an older API's parameter)",
     invoice_item({"currency": "usd", "price": "price_x", "quantity": 1})),
    ("invoice item, period without end",
     invoice_item({"currency": "usd", "amount": 1, "period": {"start": 1}})),
]  # fmt: skip


# --- 1. every shape the project sends is accepted by stripe-mock, and by the emulator ---------------


async def test_the_projects_requests_are_accepted_by_stripe_mock_and_the_emulator(
    servers: tuple[Server, Server],
) -> None:
    """The writer's and the reconciler's requests, made by their own code (the setup made the rest),
    for a customer of their own."""
    for server in servers:
        customer = (await create_customer(server.client)).id
        meters = await StripeReader(server.client, StripeBudget(1000)).meters_by_event_name()
        assert meters, server.name
        for event_name, keys in [(server.event_name, None), (server.custom_event_name, CUSTOM_KEYS)]:
            for push in pushes(event_name, customer, keys):
                result = await send(server.client, push)
                assert result.outcome == "delivered", (server.name, push, result)
        reader = StripeReader(server.client, StripeBudget(1000))
        totals = [
            await reader.period_total(m, customer, *PERIOD) for m in (server.meter, server.custom_meter)
        ]
        hours = await reader.hourly(server.meter, customer, *HOURS)
        if server.name == "emulator":
            assert meters[server.event_name].id == server.meter
            assert meters[server.custom_event_name].id == server.custom_meter
            assert totals == [25 - 3 + 1 + 22 - 2] * 2
            assert hours == {THIS_HOUR - HOUR: 25 - 3 + 22, THIS_HOUR - 2 * HOUR: 1 - 2}


# each request is a function of the server's ids; the same shapes go to both servers
Request = Callable[[Server], Callable[[stripe.StripeClient], Awaitable[Any]]]


def event(
    change: dict[str, Any] | None = None, drop: tuple[str, ...] = (), custom: bool = False, retry: int = 0
) -> Request:
    """A meter event as the writer sends it (with an Idempotency-Key), changed for the variants; the
    payload value "CUSTOMER" stands for the server's customer."""

    def build(server: Server) -> Callable[[stripe.StripeClient], Awaitable[Any]]:
        tag = uuid.uuid4().hex[:24]
        keys = (
            CUSTOM_KEYS if custom else {"customer_mapping": "stripe_customer_id", "value_settings": "value"}
        )
        params: dict[str, Any] = {
            "event_name": server.custom_event_name if custom else server.event_name,
            "payload": {keys["customer_mapping"]: "CUSTOMER", keys["value_settings"]: "7"},
            "identifier": f"sm_{tag}_0_7_1",
            "timestamp": THIS_HOUR - HOUR,
        }
        params.update(change or {})
        for key in drop:
            params.pop(key)
        if isinstance(params.get("payload"), dict):
            params["payload"] = {
                k: server.customer if v == "CUSTOMER" else v for k, v in params["payload"].items()
            }
        key = params.get("identifier") or f"key_{tag}"
        options: Any = {"idempotency_key": f"{key}-r{retry}" if retry else key}
        # the variants leave Stripe's TypedDict on purpose (a dropped required key, a wrong type)
        return lambda client: client.v1.billing.meter_events.create_async(
            cast("MeterEventCreateParams", params), options
        )

    return build


def meter(change: dict[str, Any] | None = None, drop: tuple[str, ...] = ()) -> Request:
    def build(server: Server) -> Callable[[stripe.StripeClient], Awaitable[Any]]:
        params: dict[str, Any] = {**meter_params(f"sm_other_{uuid.uuid4().hex[:8]}"), **(change or {})}
        for key in drop:
            params.pop(key)
        return lambda client: client.v1.billing.meters.create_async(cast("MeterCreateParams", params))

    return build


def summaries(change: dict[str, Any] | None = None, drop: tuple[str, ...] = ()) -> Request:
    def build(server: Server) -> Callable[[stripe.StripeClient], Awaitable[Any]]:
        params: dict[str, Any] = {
            "customer": server.customer,
            "start_time": HOURS[0],
            "end_time": HOURS[1],
            "value_grouping_window": "hour",
            "limit": 100,
            "starting_after": server.summary,
        }
        params.update(change or {})
        for key in drop:
            params.pop(key)
        return lambda client: client.v1.billing.meters.event_summaries.list_async(
            server.meter, cast("MeterEventSummaryListParams", params)
        )

    return build


def meters_list(change: dict[str, Any] | None = None, drop: tuple[str, ...] = ()) -> Request:
    def build(server: Server) -> Callable[[stripe.StripeClient], Awaitable[Any]]:
        params: dict[str, Any] = {
            "status": "active",
            "limit": 100,
            "starting_after": server.meter,
            **(change or {}),
        }
        for key in drop:
            params.pop(key)
        return lambda client: client.v1.billing.meters.list_async(cast("MeterListParams", params))

    return build


def meter_retrieve(params: dict[str, Any] | None = None) -> Request:
    return lambda server: (
        lambda client: client.v1.billing.meters.retrieve_async(
            server.meter, cast("MeterRetrieveParams | None", params)
        )
    )


def customer(params: dict[str, Any]) -> Request:
    return lambda server: (
        lambda client: client.v1.customers.create_async(cast("CustomerCreateParams", params))
    )


def customer_retrieve() -> Request:
    """The writer asks whether a customer Stripe refused a meter event for exists (a new one)."""
    return lambda server: lambda client: client.v1.customers.retrieve_async(server.customer)


NEGATIVE = {"payload": {"stripe_customer_id": "CUSTOMER", "value": "-3"}}
CUSTOM_NEGATIVE = {"payload": {"account": "CUSTOMER", "units": "-4"}}
RECONCILIATION = {"identifier": f"smrec_{'a' * 24}_rec_{'b' * 20}"}
SHORT_ID = f"sm_{'c' * 24}_12"  # sm_<24 hex>_<row version>, with the Idempotency-Key <identifier>-r1
PERIOD_TOTAL = {"start_time": PERIOD[0], "end_time": PERIOD[1]}
CUSTOM_METER = {
    "customer_mapping": {"type": "by_id", "event_payload_key": "account"},
    "value_settings": {"event_payload_key": "units"},
}

# What the project sends (the writer, the reconciler, the demo, the tests' setup): stripe-mock accepts
# each, and so must the emulator.
SENT: list[tuple[str, Request]] = [
    ("meter event", event()),
    ("meter event, negative value", event(NEGATIVE)),
    ("meter event, custom payload keys", event(custom=True)),
    ("meter event, custom payload keys, negative", event(CUSTOM_NEGATIVE, custom=True)),
    ("meter event, reconciliation identifier", event(RECONCILIATION)),
    ("meter event, identifier sm_<24 hex>_<n>, a retry's key", event({"identifier": SHORT_ID}, retry=1)),
    ("meter event, no identifier or timestamp (the demo's)", event(drop=("identifier", "timestamp"))),
    ("meter event, empty identifier", event({"identifier": ""})),
    ("meters, active, a page after a cursor", meters_list()),
    ("meters, the demo's listing", meters_list(drop=("status", "starting_after"))),
    ("meter", meter_retrieve()),
    ("hour summaries after a cursor", summaries()),
    ("period summary, minute-aligned", summaries(PERIOD_TOTAL, drop=("value_grouping_window", "limit",
                                                                    "starting_after"))),
    ("customer with email", customer({"email": "x@example.com"})),
    ("customer, retrieved", customer_retrieve()),
    ("meter with every setting", meter()),
    ("meter, the tests' short form", meter(drop=("customer_mapping", "value_settings"))),
    ("meter, custom keys", meter(CUSTOM_METER)),
    ("meter, event_time_window", meter({"event_time_window": "hour"})),
]  # fmt: skip

# Malformed: stripe-mock refuses each; the emulator must too, naming the same parameter.
MALFORMED: list[tuple[str, Request]] = [
    ("meter event, unknown parameter", event({"colour": "red"})),
    ("meter event, no event_name", event(drop=("event_name",))),
    ("meter event, no payload", event(drop=("payload",))),
    ("meter event, payload not a hash", event({"payload": "cus_x"})),
    ("meter event, payload value not a string", event({"payload": {"stripe_customer_id": {"id": "x"}}})),
    ("meter event, event_name a hash", event({"event_name": {"a": "b"}})),
    ("meter event, timestamp not a number", event({"timestamp": "yesterday"})),
    ("meter event, timestamp a decimal", event({"timestamp": "1700000000.5"})),
    ("meter event, timestamp empty", event({"timestamp": ""})),
    ("meter, unknown parameter", meter({"colour": "red"})),
    ("meter, no display_name", meter(drop=("display_name",))),
    ("meter, no event_name", meter(drop=("event_name",))),
    ("meter, no default_aggregation", meter(drop=("default_aggregation",))),
    ("meter, formula max", meter({"default_aggregation": {"formula": "max"}})),
    ("meter, customer_mapping without key", meter({"customer_mapping": {"type": "by_id"}})),
    ("meter, customer_mapping without type", meter({"customer_mapping": {"event_payload_key": "k"}})),
    ("meter, customer_mapping by email",
     meter({"customer_mapping": {"type": "by_email", "event_payload_key": "k"}})),
    ("meter, value_settings without key", meter({"value_settings": {"key": "units"}})),
    ("meter, event_time_window week", meter({"event_time_window": "week"})),
    ("meters, status bogus", meters_list({"status": "bogus"})),
    ("meters, limit not a number", meters_list({"limit": "many"})),
    ("meters, unknown parameter", meters_list({"colour": "red"})),
    ("meter, unknown parameter on retrieve", meter_retrieve({"colour": "red"})),
    ("summaries, no customer", summaries(drop=("customer",))),
    ("summaries, no start_time", summaries(drop=("start_time",))),
    ("summaries, no end_time", summaries(drop=("end_time",))),
    ("summaries, start_time not a number", summaries({"start_time": "monday"})),
    ("summaries, value_grouping_window week", summaries({"value_grouping_window": "week"})),
    ("summaries, limit not a number", summaries({"limit": "many"})),
    ("summaries, unknown parameter", summaries({"colour": "red"})),
    ("summaries, value_grouping_window empty", summaries({"value_grouping_window": ""})),
    ("customer, unknown parameter", customer({"colour": "red"})),
    ("customer, email a hash", customer({"email": {"a": "b"}})),
    ("customer, metadata not a hash", customer({"metadata": "x"})),
    ("customer, metadata value a hash", customer({"metadata": {"a": {"b": "c"}}})),
]  # fmt: skip

# Refused by Stripe as its spec or docs say, but not checked by stripe-mock: the emulator refuses them
# (naming the parameter); stripe-mock's answer is compared only if it refuses too.
STRICTER: list[tuple[str, Request, str]] = [
    ("meter event, identifier over 100 characters (spec maxLength)", event({"identifier": "i" * 101}),
     "identifier"),
    ("meter event, event_name over 100 characters (spec maxLength)", event({"event_name": "e" * 101}),
     "event_name"),
    # Stripe reads an empty string as no value: an empty required parameter is a missing one
    ("meter event, empty event_name (required)", event({"event_name": ""}), "event_name"),
    ("meter, empty display_name (required)", meter({"display_name": ""}), "display_name"),
    ("summaries, empty customer (required)", summaries({"customer": ""}), "customer"),
    ("meter, display_name over 250 characters (spec maxLength)", meter({"display_name": "d" * 251}),
     "display_name"),
    # Stripe refuses unknown parameters at any depth; the spec's nested hashes do not forbid them
    ("meter, value_settings unknown key", meter({"value_settings": {"event_payload_key": "u", "key": "v"}}),
     "value_settings[key]"),
    ("meters, limit 0 (docs: 1 to 100)", meters_list({"limit": 0}), "limit"),
    ("summaries, limit 101 (docs: 1 to 100)", summaries({"limit": 101}), "limit"),
    ("summaries, start_time not on a minute (docs)", summaries({"start_time": HOURS[0] + 30}), "start_time"),
    ("summaries, hour window, start_time not on an hour (docs)", summaries({"start_time": HOURS[0] + 60}),
     "start_time"),
]  # fmt: skip

# Refused by Stripe with a code the writer decides on (a refusal for now, or for good; see
# core/push_plan.refusal_is_temporary): the emulator answers 400 with that code, as Stripe's error
# reports name them. stripe-mock keeps no clock and no meters: it accepts these.
CODED: list[tuple[str, Request, str, str]] = [
    ("meter event, timestamp over 5 minutes ahead (docs)", event({"timestamp": NOW + HOUR}), "timestamp",
     "timestamp_in_future"),
    ("meter event, timestamp over 35 days old (docs)", event({"timestamp": NOW - 36 * 86400}), "timestamp",
     "timestamp_too_far_in_past"),
    ("meter event, no meter for the event name", event({"event_name": "sm_no_such_meter"}), "event_name",
     "no_meter"),
    ("meter event, no such customer", event({"payload": {"stripe_customer_id": "cus_nope", "value": "1"}}),
     "payload[stripe_customer_id]", "meter_event_customer_not_found"),
    ("meter event, a value with decimals",
     event({"payload": {"stripe_customer_id": "CUSTOMER", "value": "1.5"}}), "payload[value]",
     "meter_event_invalid_value"),
]  # fmt: skip

SHAPES = [(what, request, True) for what, request in SENT + BILLING_SENT] + [
    (what, r, False) for what, r in MALFORMED + BILLING_MALFORMED
]


@pytest.mark.parametrize(("what", "request_", "accepted"), SHAPES, ids=[s[0] for s in SHAPES])
async def test_the_emulator_accepts_and_refuses_as_stripe_mock(
    servers: tuple[Server, Server], what: str, request_: Request, accepted: bool
) -> None:
    mock, emu = servers
    expected = await mock.outcome(request_(mock))
    assert expected.accepted == accepted, f"stripe-mock on {what}: {expected}"
    found = await emu.outcome(request_(emu))
    assert found.accepted == expected.accepted, f"{what}: stripe-mock {expected}, emulator {found}"
    if not expected.accepted:
        assert 400 <= found.status < 500 and 400 <= expected.status < 500, (expected, found)
        assert same_param(expected, found), f"{what}: stripe-mock {expected}, emulator {found}"


def same_param(mock: Outcome, emulator: Outcome) -> bool:
    """stripe-mock names the parameter in its message, if at all; for an unknown key it names only the
    object holding it (`value_settings` for Stripe's `value_settings[key]`)."""
    if mock.param is None:
        return True
    if mock.message.endswith("additional properties are not allowed"):
        return (emulator.param or "").startswith(mock.param + "[")
    return emulator.param == mock.param


@pytest.mark.parametrize(("what", "request_", "param"), STRICTER, ids=[s[0] for s in STRICTER])
async def test_the_emulator_refuses_what_stripe_refuses_beyond_stripe_mock(
    servers: tuple[Server, Server], what: str, request_: Request, param: str
) -> None:
    mock, emu = servers
    found = await emu.outcome(request_(emu))
    assert found.status == 400 and found.param == param, f"{what}: emulator {found}"
    expected = await mock.outcome(request_(mock))
    if not expected.accepted:
        assert same_param(expected, found), f"{what}: stripe-mock {expected}, emulator {found}"


@pytest.mark.parametrize(("what", "request_", "param", "code"), CODED, ids=[c[0] for c in CODED])
async def test_the_emulator_refuses_with_the_codes_the_writer_decides_on(
    servers: tuple[Server, Server], what: str, request_: Request, param: str, code: str
) -> None:
    mock, emu = servers
    found = await emu.outcome(request_(emu))
    assert (found.status, found.param, found.code) == (400, param, code), f"{what}: emulator {found}"
    expected = await mock.outcome(request_(mock))
    assert expected.accepted or same_param(expected, found), (
        f"{what}: stripe-mock {expected}, emulator {found}"
    )
