"""The pre-invoice guard through the real pipeline: a worker (counting, the Stripe writer, the guard),
the API receiving the emulator's signed invoice events, and billing on a Stripe test clock.

The test clock's period ends a few days ago on the application's clock, so its usage is inside Stripe's
35 days and inside the default lateness; the guard judges deadlines by the test clock.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import psycopg
import pytest
import pytest_asyncio
import stripe
from aiohttp.test_utils import TestClient, TestServer
from psycopg.rows import dict_row

from stripemeter.api.app import create_app as create_api
from stripemeter.api.appkeys import SETTINGS
from stripemeter.api.operator_metrics import exposition, refresh_invoice_gauges
from stripemeter.domain.config import Secret, Settings
from stripemeter.tools.stripe_emulator import EmulatorState, webhooks
from tests.integration.client import eventually, produce
from tests.integration.harness import ApiClient, StartWorker
from tests.integration.stripe_helpers import emulator_settings

SECRET = "whsec_guard_test"
# the worker's and the API's reconciliation: short settle time, and a delivered push Stripe does not
# show is taken for lost after 5 s (Stripe's summaries lag; the emulator's do not)
RECONCILING: dict[str, Any] = {"reconcile_settle_seconds": 3.0, "reconcile_lag_cap_seconds": 5.0}
HOUR = 3600


@dataclass
class Billing:
    """A tenant billed through a metered price on a test clock."""

    state: EmulatorState
    stripe: stripe.StripeClient
    api: ApiClient
    tenant: str
    event_name: str
    meter_id: str
    price_id: str
    clock_id: str
    start: int  # the subscriptions' period start (the billing anchor), unix seconds
    customers: dict[str, str]  # customerRef -> Stripe customer id
    period_end: int = 0  # the subscriptions' first period end

    async def subscribe(self, customer_ref: str) -> None:
        customer = await call(
            self.stripe.v1.customers.create,
            {"email": f"{customer_ref}@example.com", "test_clock": self.clock_id},
        )
        self.customers[customer_ref] = customer.id
        # created at the clock's time, which is its billing cycle anchor
        subscription = await call(
            self.stripe.v1.subscriptions.create,
            {"customer": customer.id, "items": [{"price": self.price_id}]},
        )
        self.period_end = int(subscription["items"]["data"][0]["current_period_end"])
        anchor = datetime.fromtimestamp(self.start, tz=UTC).isoformat().replace("+00:00", "Z")
        put = await self.api.put(
            f"/v1/customers/{self.tenant}/{customer_ref}",
            json={"stripeCustomerId": customer.id, "billingAnchor": anchor},
        )
        assert put.status == 200, await put.text()

    async def invoices(self) -> dict[str, dict[str, Any]]:
        """customerRef -> its newest invoice, as Stripe holds it."""
        out = {}
        for ref, cus in self.customers.items():
            found = (await call(self.stripe.v1.invoices.list, {"customer": cus, "limit": 10})).data
            cycle = [i for i in found if i.billing_reason == "subscription_cycle"]
            if cycle:
                out[ref] = cycle[0].to_dict()
        return out

    async def advance(self, to: int) -> None:
        await call(self.stripe.v1.test_helpers.test_clocks.advance, self.clock_id, {"frozen_time": to})

    def lose(self, customer_ref: str, bucket: int) -> int:
        """Stripe loses every meter event of one customer's hour; returns the units lost."""
        lost = 0
        for event in self.state.meter_events(self.meter_id):
            if event.customer == self.customers[customer_ref] and event.timestamp == bucket:
                event.cancelled = True
                lost += event.value
        return lost


@pytest_asyncio.fixture
async def guarded_api(env: Settings, emulator: tuple[EmulatorState, str]) -> AsyncIterator[ApiClient]:
    """The API with Stripe's settings and the webhook secret; the emulator delivers its events to it."""
    state, base = emulator
    settings = env.with_overrides(
        **emulator_settings(base), stripe_webhook_secret=Secret(SECRET), **RECONCILING
    )
    client = TestClient(TestServer(create_api(settings)))
    await client.start_server()
    state.set_webhook(str(client.make_url("/v1/stripe/webhook")), SECRET)
    yield client
    await client.close()


async def call(fn: Any, *args: Any) -> Any:
    """A call of the synchronous Stripe client, off the event loop that runs the emulator."""
    return await asyncio.to_thread(fn, *args)


async def billing(api: ApiClient, emulator: tuple[EmulatorState, str], start: int) -> Billing:
    state, base = emulator
    client = stripe.StripeClient("sk_test_emulator", base_addresses={"api": base, "meter_events": base})
    tenant = f"ig-{uuid.uuid4().hex[:6]}"
    event_name = f"req_{uuid.uuid4().hex[:8]}"
    meter = await call(
        client.v1.billing.meters.create,
        {
            "display_name": "requests",
            "event_name": event_name,
            "default_aggregation": {"formula": "sum"},
            "customer_mapping": {"type": "by_id", "event_payload_key": "stripe_customer_id"},
            "value_settings": {"event_payload_key": "value"},
        },
    )
    product = await call(client.v1.products.create, {"name": "API requests"})
    price = await call(
        client.v1.prices.create,
        {
            "currency": "usd",
            "product": product.id,
            "unit_amount": 2,
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id},
        },
    )
    clock = await call(client.v1.test_helpers.test_clocks.create, {"frozen_time": start})
    put = await api.put(
        f"/v1/mappings/{tenant}/requests", json={"stripeMeterEventName": event_name, "aggregation": "sum"}
    )
    assert put.status == 200, await put.text()
    return Billing(state, client, api, tenant, event_name, meter.id, price.id, clock.id, start, {})


def usage(tenant: str, customer: str, ts: int, quantity: int, key: str) -> dict[str, Any]:
    stamp = datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")
    return {"tenantId": tenant, "metric": "requests", "customerRef": customer, "quantity": quantity,
            "ts": stamp, "idempotencyKey": key}  # fmt: skip


async def local_total(env: Settings, tenant: str, customer: str, start: int, end: int) -> int:
    """The customer's counted units over the hours whose start lies in [start, end)."""
    async with await psycopg.AsyncConnection.connect(env.database_url.value) as conn:
        cur = await conn.execute(
            "SELECT coalesce(sum(total_micros), 0) FROM counters WHERE tenant_id = %s AND customer_ref = %s"
            " AND bucket >= to_timestamp(%s) AND bucket < to_timestamp(%s)",
            (tenant, customer, start, end),
        )
        row = await cur.fetchone()
    assert row is not None
    return int(row[0]) // 1_000_000


async def guard_rows(env: Settings, tenant: str) -> dict[str, dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(env.database_url.value) as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute("SELECT * FROM invoices WHERE tenant_id = %s", (tenant,))
        return {r["customer_ref"]: r for r in await cur.fetchall()}


def quantity(invoice: dict[str, Any]) -> int:
    lines = invoice["lines"]["data"]
    assert len(lines) == 1
    return int(float(lines[0].get("quantity_decimal") or lines[0]["quantity"]))


def anchor_days_ago(days: int, minute: int = 0) -> int:
    now = int(time.time())
    return now - now % HOUR - days * 24 * HOUR + minute * 60


async def test_invoices_finalize_with_the_counted_quantities_and_drift_beyond_epsilon_waits_for_the_operator(
    env: Settings,
    start_worker: StartWorker,
    emulator: tuple[EmulatorState, str],
    guarded_api: ApiClient,
) -> None:
    b = await billing(guarded_api, emulator, anchor_days_ago(33))
    for ref in ("c1", "c2", "c3", "c4"):
        await b.subscribe(ref)
    worker = start_worker(
        "w1",
        **emulator_settings(emulator[1]),
        **RECONCILING,
        invoice_check_seconds=1.0,
        invoice_deadline_margin_seconds=600.0,
    )
    worker.wait_ready()
    end = b.period_end
    small, big = end - 20 * HOUR, end - 5 * HOUR  # two hours of the period: 1 unit, and 2,000 units
    events = []
    for ref in b.customers:
        events.append(usage(b.tenant, ref, small + 60, 1, f"{ref}-small"))
        events += [usage(b.tenant, ref, big + 60 * i, 100, f"{ref}-big-{i}") for i in range(20)]
    await produce(env, [events])

    async def pushed() -> bool:
        counted = sum(e.value for e in b.state.meter_events(b.meter_id))
        return counted == 4 * 2001

    await eventually(pushed, timeout=90, what="every hour pushed to Stripe")
    # Stripe loses the small hour of c1..c3 (within epsilon) and the big hour of c4 (beyond it)
    assert [b.lose(ref, small) for ref in ("c1", "c2", "c3")] == [1, 1, 1]
    assert b.lose("c4", big) == 2000
    await b.advance(end + 1)  # the period ends: Stripe creates the drafts and tells the API

    async def all_held() -> bool:
        rows = await guard_rows(env, b.tenant)
        return len(rows) == 4 and all(r["guard_state"] == "held" for r in rows.values())

    await eventually(all_held, timeout=60, what="the four drafts held")
    held = await b.invoices()
    assert all(i["status"] == "draft" and i["auto_advance"] is False for i in held.values())
    # late usage of c1 inside the grace: the guard waits for it too
    await produce(env, [[usage(b.tenant, "c1", end - 2 * HOUR, 7, f"late-{i}") for i in range(3)]])

    async def three_finalized() -> bool:
        rows = await guard_rows(env, b.tenant)
        return all(rows[ref]["guard_state"] == "finalized" for ref in ("c1", "c2", "c3"))

    await eventually(three_finalized, timeout=90, what="c1, c2 and c3 finalized")
    final = await b.invoices()
    for ref in ("c1", "c2", "c3"):
        assert final[ref]["status"] in ("open", "paid")
        assert quantity(final[ref]) == await local_total(env, b.tenant, ref, b.start, end)
    assert quantity(final["c1"]) == 2001 + 21  # the late events are on the invoice
    rows = await guard_rows(env, b.tenant)
    proof = await (await guarded_api.get(f"/v1/invoices/{rows['c1']['invoice_id']}")).json()
    line = proof["lines"][0]
    assert (line["local"], line["stripe"], line["proven"], line["invoiceQuantity"]) == (
        2022,
        2022,
        True,
        "2022",
    )
    assert line["hoursCompared"] == 3 and proof["releaseReason"]

    # c4 stays held beyond epsilon, named by the operator metric, until the operator aligns Stripe
    assert rows["c4"]["guard_state"] == "held" and rows["c4"]["reason_code"] == "beyond_epsilon"
    assert (await b.invoices())["c4"]["status"] == "draft"
    await refresh_invoice_gauges(guarded_api.app)  # what the operator listener serves
    held_series = f'invoice="{rows["c4"]["invoice_id"]}"'
    assert any(
        line.startswith("stripemeter_invoice_held_seconds{")
        and held_series in line
        and "beyond_epsilon" in line
        for line in exposition(operator=True).decode().splitlines()
    )
    period = rows["c4"]["lines"][0]["period"]
    body = {"tenantId": b.tenant, "metric": "requests", "period": period, "align": "all"}
    run = await guarded_api.post("/v1/reconciliation/run", json=body)
    while run.status == 409:  # the guard is reconciling the tenant this moment: come back, as any client
        await asyncio.sleep(float(run.headers["Retry-After"]))
        run = await guarded_api.post("/v1/reconciliation/run", json=body)
    assert run.status == 200, await run.text()

    async def c4_finalized() -> bool:
        return bool((await guard_rows(env, b.tenant))["c4"]["guard_state"] == "finalized")

    await eventually(c4_finalized, timeout=90, what="c4 finalized after the operator's alignment")
    assert (
        quantity((await b.invoices())["c4"]) == await local_total(env, b.tenant, "c4", b.start, end) == 2001
    )


async def redeliver(state: EmulatorState, url: str, invoice_id: str) -> None:
    """Stripe delivers every event of the invoice again, newest first (out of order), to ``url``."""
    events = [e for e in state.v1_events.values() if e["data"]["object"]["id"] == invoice_id]
    async with aiohttp.ClientSession() as session:
        for event in sorted(events, key=lambda e: e["created"], reverse=True):
            delivery = webhooks.Delivery(event["id"], url)
            await webhooks.deliver(session, webhooks.Destination(url, SECRET), event, delivery)
            assert delivery.delivered, delivery.attempts


@pytest.mark.exactly_once
async def test_a_guard_killed_mid_proof_and_events_delivered_twice_to_two_replicas_finalize_once(
    env: Settings,
    start_worker: StartWorker,
    emulator: tuple[EmulatorState, str],
    guarded_api: ApiClient,
) -> None:
    """Also: with a billing anchor at 10:45-like minutes, the hour that straddles the period end is
    billed in the period that holds its start, in Stripe and in the proof alike."""
    state, base = emulator
    b = await billing(guarded_api, emulator, anchor_days_ago(33, minute=45))
    await b.subscribe("c1")
    replica = TestClient(TestServer(create_api(guarded_api.app[SETTINGS])))  # a second API
    await replica.start_server()
    worker = start_worker(
        "w1", slot="main", **emulator_settings(base), **RECONCILING, invoice_check_seconds=1.0
    )
    worker.wait_ready()
    end = b.period_end
    straddling = end - end % HOUR  # the hour holding the period end (its start is inside the period)
    assert straddling < end < straddling + HOUR
    small = end - 20 * HOUR
    events = [usage(b.tenant, "c1", small, 1, "small")]
    events += [usage(b.tenant, "c1", end - 3 * HOUR + i, 100, f"big-{i}") for i in range(10)]
    events.append(usage(b.tenant, "c1", end + 10 * 60, 5, "after-the-anchor"))  # in the straddling hour
    await produce(env, [events])

    async def pushed() -> bool:
        return sum(e.value for e in state.meter_events(b.meter_id)) == 1006

    await eventually(pushed, timeout=90, what="every hour pushed to Stripe")
    assert b.lose("c1", small - small % HOUR) == 1  # Stripe loses a unit: the guard has to hold
    await b.advance(end + 1)

    async def held() -> bool:
        rows = await guard_rows(env, b.tenant)
        return "c1" in rows and rows["c1"]["guard_state"] == "held"

    await eventually(held, timeout=60, what="the draft held")
    invoice_id = (await guard_rows(env, b.tenant))["c1"]["invoice_id"]
    worker.kill9()  # mid-proof: held, correction maybe sent, not yet released
    urls = [str(api.make_url("/v1/stripe/webhook")) for api in (guarded_api, replica)]
    await asyncio.gather(*(redeliver(state, url, invoice_id) for url in urls * 2))
    start_worker(
        "w2", slot="main", **emulator_settings(base), **RECONCILING, invoice_check_seconds=1.0
    ).wait_ready()

    async def finalized() -> bool:
        return bool((await guard_rows(env, b.tenant))["c1"]["guard_state"] == "finalized")

    await eventually(finalized, timeout=90, what="the draft finalized after the restart")
    await asyncio.gather(*(redeliver(state, url, invoice_id) for url in urls))  # again, after the end
    await asyncio.sleep(2)
    row = (await guard_rows(env, b.tenant))["c1"]
    assert row["guard_state"] == "finalized"
    invoice = (await b.invoices())["c1"]
    finalized_events = [
        e for e in state.v1_events.values()
        if e["type"] == "invoice.finalized" and e["data"]["object"]["id"] == invoice_id
    ]  # fmt: skip
    assert len(finalized_events) == 1  # finalized once, whatever was delivered twice
    local = await local_total(env, b.tenant, "c1", b.start, end)
    assert quantity(invoice) == local == 1006  # the straddling hour's 5 units are on this invoice
    line = row["lines"][0]
    assert (line["local"], line["stripe"], line["proven"]) == (1006, 1006, True)
    await replica.close()


async def test_handed_back_released_at_the_deadline_and_later_usage_carried_once(
    env: Settings,
    start_worker: StartWorker,
    emulator: tuple[EmulatorState, str],
    guarded_api: ApiClient,
) -> None:
    """STRIPEMETER_INVOICE_RELEASE=schedule, STRIPEMETER_INVOICE_UNPROVEN=release and
    STRIPEMETER_INVOICE_CARRY_UNBILLED=on: a proven draft is handed to Stripe's schedule, an unproven
    one is released at its deadline (on the test clock), and usage counted for a finalized period
    afterwards goes to the customer's next invoice as an invoice item, once per increment."""
    state, base = emulator
    b = await billing(guarded_api, emulator, anchor_days_ago(33))
    for ref in ("c1", "c2"):
        await b.subscribe(ref)
    start_worker(
        "w1",
        **emulator_settings(base),
        **RECONCILING,
        invoice_check_seconds=1.0,
        invoice_release="schedule",
        invoice_unproven="release",
        invoice_carry_unbilled=True,
        invoice_unbilled_check_seconds=1.0,
    ).wait_ready()
    end = b.period_end
    events = [
        usage(b.tenant, ref, end - 5 * HOUR + i, 100, f"{ref}-{i}") for ref in ("c1", "c2") for i in range(10)
    ]
    events += [usage(b.tenant, "c2", end - 20 * HOUR, 1, "c2-small")]
    await produce(env, [events])

    async def pushed() -> bool:
        return sum(e.value for e in state.meter_events(b.meter_id)) == 2001

    await eventually(pushed, timeout=90, what="every hour pushed to Stripe")
    assert b.lose("c2", end - 5 * HOUR) == 1000  # beyond epsilon: it cannot be proven
    await b.advance(end + 1)

    async def released_and_held() -> bool:
        rows = await guard_rows(env, b.tenant)
        return (
            len(rows) == 2
            and rows["c1"]["guard_state"] == "released"
            and rows["c2"]["reason_code"] == "beyond_epsilon"
        )

    await eventually(released_and_held, timeout=60, what="c1 handed back, c2 held")
    drafts = await b.invoices()
    assert drafts["c1"]["auto_advance"] is True and drafts["c2"]["auto_advance"] is False
    await b.advance(end + HOUR + 1)  # past Stripe's hour of grace, and c2's deadline

    async def finalized_and_handed_back() -> bool:
        rows = await guard_rows(env, b.tenant)
        return bool(rows["c1"]["guard_state"] == "finalized" and rows["c2"]["guard_state"] == "released")

    await eventually(finalized_and_handed_back, timeout=60, what="c1 finalized by Stripe, c2 handed back")
    await b.advance(end + HOUR + 60)  # Stripe finalizes a handed-back draft when its clock next moves

    async def both_finalized() -> bool:
        rows = await guard_rows(env, b.tenant)
        return all(r["guard_state"] == "finalized" for r in rows.values())

    await eventually(both_finalized, timeout=60, what="both finalized")
    final = await b.invoices()
    assert quantity(final["c1"]) == 1000 and quantity(final["c2"]) == 1  # c2 released as Stripe held it
    rows = await guard_rows(env, b.tenant)
    assert rows["c2"]["reason_code"] == "deadline" and "unproven" in rows["c2"]["release_reason"]
    # usage of the closed period after the invoices: c1's late 30 units join c2's 1,000 missing ones
    await produce(env, [[usage(b.tenant, "c1", end - 2 * HOUR, 10, f"late-{i}") for i in range(3)]])

    async def carried() -> dict[str, list[Any]]:
        items = {}
        for ref in ("c1", "c2"):
            found = await call(b.stripe.v1.invoice_items.list, {"customer": b.customers[ref]})
            listed = [i.to_dict() for i in found.data]
            items[ref] = [(i["quantity"], i["metadata"].get("stripemeter_invoice")) for i in listed]
        return items

    async def both_carried() -> bool:
        items = await carried()
        return bool(items["c1"] and items["c2"])

    await eventually(both_carried, timeout=60, what="the unbilled usage carried")
    await asyncio.sleep(3)  # more unbilled checks: nothing is carried twice
    items = await carried()
    assert items == {
        "c1": [(30, final["c1"]["id"])],
        "c2": [(1000, final["c2"]["id"])],
    }
    rows = await guard_rows(env, b.tenant)
    assert [(u["units"], u["carried"], u["amount"]) for u in rows["c1"]["unbilled"]] == [(30, 30, "60")]


async def test_invoice_events_without_an_invoice_are_acknowledged_and_bad_signatures_refused(
    env: Settings, emulator: tuple[EmulatorState, str], guarded_api: ApiClient
) -> None:
    """``invoice.upcoming`` describes an invoice that does not exist yet (no id): 200, nothing due."""
    upcoming = {
        "id": "evt_up",
        "object": "event",
        "type": "invoice.upcoming",
        "created": 1,
        "livemode": False,
        "api_version": "2026-10-28.endive",
        "data": {"object": {"object": "invoice", "customer": "cus_x"}},
    }
    body = orjson.dumps(upcoming)
    signed = {
        "Stripe-Signature": webhooks.sign(body, SECRET, int(time.time())),
        "Content-Type": "application/json",
    }
    answer = await guarded_api.post("/v1/stripe/webhook", data=body, headers=signed)
    assert answer.status == 200 and (await answer.json())["handled"] is False
    forged = {"Stripe-Signature": webhooks.sign(body, "whsec_other", int(time.time()))}
    refused = await guarded_api.post("/v1/stripe/webhook", data=body, headers=forged)
    assert refused.status == 400 and (await refused.json())["error"]["field"] == "Stripe-Signature"
