"""The emulator is at least as strict as Stripe: idempotent answers of failed requests, lost responses,
asynchronous validation reported through a signed webhook, pre-aggregated meters, custom payload keys
and test mode's shared operations budget. Driven through the real `stripe` package."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import stripe
from aiohttp import web
from aiohttp.test_utils import TestServer
from stripe.events import (
    V1BillingMeterErrorReportTriggeredEvent,
    V1BillingMeterErrorReportTriggeredEventNotification,
    V1BillingMeterNoMeterFoundEvent,
)

from stripemeter.tools.stripe_emulator import EmulatorState, ManualClock, create_app, webhooks
from tests.unit.tools.stripe_emulator.test_emulator import (
    START,
    Emulator,
    call,
    error_body,
    headers,
    send,
    setup_meter,
    totals,
)

SECRET = "whsec_test_emulator"


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    clock = ManualClock(START)
    state = EmulatorState(clock=clock, ops_per_second=0)  # unlimited: the budget has its own tests
    server = TestServer(create_app(state), host="127.0.0.1")
    await server.start_server()
    yield Emulator(state, clock, f"http://127.0.0.1:{server.port}")
    await server.close()


@dataclass
class Receiver:
    """A webhook endpoint: records every delivery; answers 500 to the first `failures` of them."""

    url: str = ""
    failures: int = 0
    received: list[tuple[bytes, str]] = field(default_factory=list)
    answered: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((await request.read(), request.headers.get("Stripe-Signature", "")))
        if self.failures > 0:
            self.failures -= 1
            return web.Response(status=500)
        self.answered.set()
        return web.Response(text="ok")

    async def delivered(self, count: int, timeout: float = 10) -> list[tuple[bytes, str]]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count or self.failures:
            assert time.monotonic() < deadline, f"{len(self.received)} deliveries, expected {count}"
            await asyncio.sleep(0.02)
        return self.received


@contextlib.asynccontextmanager
async def receiving(emu: Emulator, secret: str) -> AsyncIterator[Receiver]:
    """A webhook receiver the emulator delivers its events to, signed with ``secret``."""
    hook = Receiver()
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    hook.url = f"http://127.0.0.1:{server.port}/hook"
    async with aiohttp.ClientSession() as session:
        body = {"url": hook.url, "secret": secret}
        async with session.post(emu.url + "/_emulator/webhook", json=body) as response:
            assert response.status == 200
    try:
        yield hook
    finally:
        await server.close()


@pytest.fixture
async def receiver(emu: Emulator) -> AsyncIterator[Receiver]:
    async with receiving(emu, SECRET) as hook:
        yield hook


def event_params(customer: str, value: str = "1", **extra: Any) -> dict[str, Any]:
    return {"event_name": "api_calls", "payload": {"stripe_customer_id": customer, "value": value}, **extra}


async def create_event(client: stripe.StripeClient, params: dict[str, Any], key: str) -> Any:
    options: Any = {"idempotency_key": key}
    return await call(client.v1.billing.meter_events.create, params, options)


# --- idempotency: what Stripe stores, and what it does not ---------------------------------------


@pytest.mark.parametrize("landed", [False, True])
async def test_500_is_replayed_for_its_key_and_a_new_key_meets_the_identifier(
    emu: Emulator, landed: bool
) -> None:
    client, customer, meter = await setup_meter(emu)
    emu.state.faults.update({"landed_server_errors" if landed else "server_errors": 1})
    params = event_params(customer, "5", identifier="sm_x_0_5_1", timestamp=START - 60)
    with pytest.raises(stripe.APIError) as first:
        await create_event(client, params, "key-1")
    assert first.value.http_status == 500 and "Idempotent-Replayed" not in headers(first.value)
    with pytest.raises(stripe.APIError) as again:
        await create_event(client, params, "key-1")
    assert again.value.http_status == 500 and headers(again.value)["Idempotent-Replayed"] == "true"
    assert headers(again.value)["Stripe-Should-Retry"] == "true"
    assert again.value.json_body == first.value.json_body
    if landed:  # the first request recorded the event before failing: a new key finds its identifier
        with pytest.raises(stripe.InvalidRequestError) as caught:
            await create_event(client, params, "key-2")
        assert "An event already exists with identifier sm_x_0_5_1" in str(caught.value)
    else:
        await create_event(client, params, "key-2")
    assert [e.identifier for e in emu.state.meter_events(meter)] == ["sm_x_0_5_1"]
    assert await totals(client, meter, customer) == [5.0]


async def test_errors_while_executing_are_replayed(emu: Emulator) -> None:
    client, customer, _ = await setup_meter(emu)
    unknown = {**event_params(customer), "event_name": "later"}
    with pytest.raises(stripe.InvalidRequestError) as caught:
        await create_event(client, unknown, "key-no-meter")
    assert caught.value.code == "no_meter"
    await call(
        client.v1.billing.meters.create,
        {"display_name": "Later", "event_name": "later", "default_aggregation": {"formula": "sum"}},
    )
    with pytest.raises(stripe.InvalidRequestError) as replayed:  # the meter exists now; the answer stays
        await create_event(client, unknown, "key-no-meter")
    assert replayed.value.code == "no_meter" and headers(replayed.value)["Idempotent-Replayed"] == "true"
    await create_event(client, event_params(customer, identifier="dup"), "key-a")
    for _ in range(2):
        with pytest.raises(stripe.InvalidRequestError) as duplicate:
            await create_event(client, event_params(customer, identifier="dup"), "key-b")
        assert "An event already exists with identifier dup" in str(duplicate.value)
    assert headers(duplicate.value)["Idempotent-Replayed"] == "true"


async def test_shape_errors_and_429_are_not_stored(emu: Emulator) -> None:
    client, customer, meter = await setup_meter(emu)
    with pytest.raises(stripe.InvalidRequestError) as caught:
        await create_event(client, event_params(customer, colour="red"), "key-1")
    assert caught.value.code == "parameter_unknown"
    # the key is still free: the same key with other (valid) parameters runs
    await create_event(client, event_params(customer, "2"), "key-1")
    emu.state.faults.rate_limit = 1
    with pytest.raises(stripe.RateLimitError):
        await create_event(client, event_params(customer, "3"), "key-2")
    accepted = await create_event(client, event_params(customer, "3"), "key-2")
    assert "Idempotent-Replayed" not in accepted.last_response.headers
    assert [e.value for e in emu.state.meter_events(meter)] == [2, 3]


async def test_a_lock_timeout_is_a_429_to_retry_and_is_not_stored(emu: Emulator) -> None:
    from stripemeter.adapters.stripe.client import classify

    client, customer, meter = await setup_meter(emu)
    emu.state.faults.update({"lock_timeouts": 1, "path_prefix": "/v1/billing/meter_events"})
    params = event_params(customer, "5", identifier="locked-1")
    with pytest.raises(stripe.RateLimitError) as caught:
        await create_event(client, params, "key-locked")
    assert caught.value.http_status == 429 and error_body(caught.value)["error"]["code"] == "lock_timeout"
    assert headers(caught.value)["Stripe-Should-Retry"] == "true"
    assert classify(caught.value).outcome == "refused_for_now"  # the writer sends it again, unparked
    accepted = await create_event(client, params, "key-locked")
    assert "Idempotent-Replayed" not in accepted.last_response.headers
    assert [e.value for e in emu.state.meter_events(meter)] == [5]


async def test_a_timestamp_ahead_of_stripes_clock_is_refused_for_its_key(emu: Emulator) -> None:
    """The refusal ran (it is stored for the key): once the clock has caught up, the same request
    passes only under a new key. So the writer sends a request Stripe refused for now under a new key."""
    from stripemeter.adapters.stripe.client import classify

    client, customer, meter = await setup_meter(emu)
    params = event_params(customer, "5", identifier="early-1", timestamp=START + 301)
    with pytest.raises(stripe.InvalidRequestError) as caught:
        await create_event(client, params, "key-early")
    assert (caught.value.code, caught.value.param) == ("timestamp_in_future", "timestamp")
    assert classify(caught.value).outcome == "refused_for_now"
    emu.clock.advance(2)
    with pytest.raises(stripe.InvalidRequestError):
        await create_event(client, params, "key-early")  # replayed
    await create_event(client, params, "key-early-r1")
    assert [e.value for e in emu.state.meter_events(meter)] == [5]


async def test_lost_response_is_processed_and_its_retry_gets_the_stored_answer(emu: Emulator) -> None:
    client, customer, meter = await setup_meter(emu)
    emu.state.faults.update({"lost_responses": 1, "path_prefix": "/v1/billing/meter_events"})
    params = event_params(customer, "4", identifier="lost-1", timestamp=START - 60)
    with pytest.raises(stripe.APIConnectionError):
        await create_event(client, params, "key-lost")
    assert [e.identifier for e in emu.state.meter_events(meter)] == ["lost-1"]  # processed all the same
    retried = await create_event(client, params, "key-lost")
    assert retried.identifier == "lost-1" and retried.last_response.headers["Idempotent-Replayed"] == "true"
    # a client that retries by itself (same generated key) never notices, and the event counts once
    emu.state.faults.lost_responses = 1
    await call(emu.client(retries=1).v1.billing.meter_events.create, event_params(customer, "6"))
    assert emu.state.faults.lost_responses == 0
    assert [e.value for e in emu.state.meter_events(meter)] == [4, 6]


# --- asynchronous validation, error reports and the webhook -------------------------------------


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"event_name": "nothing"}, "no_meter"),
        ({"payload": {"stripe_customer_id": "cus_nope", "value": "1"}}, "meter_event_customer_not_found"),
        ({"payload": {"value": "1"}}, "meter_event_no_customer_defined"),
        ({"payload": {"stripe_customer_id": "CUSTOMER", "value": "1.5"}}, "meter_event_invalid_value"),
        ({"payload": {"stripe_customer_id": "CUSTOMER", "value": "1" * 16}},
         "meter_event_value_too_many_digits"),
        ({"timestamp": START - 36 * 86400}, "timestamp_too_far_in_past"),
        ({"timestamp": START + 301}, "timestamp_in_future"),
    ],
)  # fmt: skip
async def test_async_validation_accepts_then_drops_and_reports(
    emu: Emulator, receiver: Receiver, change: dict[str, Any], code: str
) -> None:
    client, customer, meter = await setup_meter(emu)
    emu.state.faults.async_validation = True
    params = {**event_params(customer, "7", identifier="bad-1", timestamp=START - 60), **change}
    if "payload" in change:
        params["payload"] = {k: customer if v == "CUSTOMER" else v for k, v in change["payload"].items()}
    accepted = await create_event(client, params, "idem-bad-1")
    assert accepted.object == "billing.meter_event" and accepted.identifier == "bad-1"
    assert emu.state.meter_events(meter) == [] and await totals(client, meter, customer) == []
    [(body, signature)] = await receiver.delivered(1)

    notification = emu.client().parse_event_notification(body, signature, SECRET)
    expected_type = webhooks.NO_METER if code == "no_meter" else webhooks.ERROR_REPORT
    assert notification.type == expected_type and not notification.livemode
    if code != "no_meter":
        assert isinstance(notification, V1BillingMeterErrorReportTriggeredEventNotification)
        assert notification.related_object.id == meter
        assert notification.related_object.url == f"/v1/billing/meters/{meter}"
    http = stripe.AIOHTTPClient()
    async_client = stripe.StripeClient("sk_test_emulator", base_addresses={"api": emu.url}, http_client=http)
    try:
        event = await async_client.parse_event_notification(body, signature, SECRET).fetch_event_async()
    finally:
        await http.close_async()  # type: ignore[no-untyped-call]  # stripe: close_async() is unannotated
    assert isinstance(event, V1BillingMeterErrorReportTriggeredEvent | V1BillingMeterNoMeterFoundEvent)
    assert event.id == notification.id and event.type == expected_type
    reason = event.data.reason
    assert reason.error_count == 1 and reason.error_types[0].code == code
    sample = reason.error_types[0].sample_errors[0]
    assert sample.request.identifier == "idem-bad-1" and sample.error_message
    assert event.data.validation_start.endswith("Z")

    # the dropped event's identifier is not reserved: the corrected event goes through
    await create_event(
        client, event_params(customer, "7", identifier="bad-1", timestamp=START - 60), "idem-2"
    )
    assert await totals(client, meter, customer) == [7.0]
    async with aiohttp.ClientSession() as session, session.get(emu.url + "/_emulator/error_reports") as r:
        [report] = (await r.json())["data"]
    assert report["code"] == code and report["event"] == event.id and report["delivery"]["delivered"]


async def test_async_validation_reports_an_inactive_meter(emu: Emulator, receiver: Receiver) -> None:
    client, customer, meter = await setup_meter(emu)
    await call(client.v1.billing.meters.deactivate, meter)
    emu.state.faults.async_validation = True
    await send(client, customer, "3", identifier="to-archived")
    [(body, signature)] = await receiver.delivered(1)
    notification = emu.client().parse_event_notification(body, signature, SECRET)
    assert isinstance(notification, V1BillingMeterErrorReportTriggeredEventNotification)
    assert notification.related_object.id == meter
    [report] = emu.state.error_reports
    assert (report["code"], report["meter"], report["event"]) == ("archived_meter", meter, notification.id)
    assert emu.state.meter_events(meter) == []


async def test_async_validation_keeps_the_synchronous_checks(emu: Emulator) -> None:
    client, customer, _ = await setup_meter(emu)
    emu.state.faults.async_validation = True
    await send(client, customer, "1", identifier="once")
    with pytest.raises(stripe.InvalidRequestError) as duplicate:
        await send(client, customer, "1", identifier="once")
    assert "An event already exists with identifier once" in str(duplicate.value)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"payload": {}}, "payload"),
        ({"timestamp": "soon"}, "timestamp"),
        ({"identifier": "i" * 101}, "identifier"),
        ({"colour": "red"}, "colour"),
    ]
    for bad, param in cases:
        with pytest.raises(stripe.InvalidRequestError) as caught:
            await call(client.v1.billing.meter_events.create, {**event_params(customer), **bad})
        assert caught.value.param == param
    # without an Idempotency-Key the report names the meter event's identifier
    async with aiohttp.ClientSession() as session:
        form = {"event_name": "api_calls", "payload[stripe_customer_id]": "cus_nope", "payload[value]": "1"}
        form["identifier"] = "no-key"
        headers = {"Authorization": "Bearer sk_test_x"}
        async with session.post(emu.url + "/v1/billing/meter_events", data=form, headers=headers) as r:
            assert r.status == 200
        async with session.get(emu.url + "/_emulator/error_reports") as r:
            [report] = (await r.json())["data"]
    assert report["identifier"] == "no-key" and report["delivery"] is None  # no webhook configured
    assert emu.state.v2_events[report["event"]]["data"]["reason"]["error_types"][0]["sample_errors"][0][
        "request"
    ] == {"identifier": "no-key"}


async def test_webhook_is_retried_until_the_receiver_takes_it(
    emu: Emulator, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webhooks, "RETRY_DELAYS", (0.05, 0.05, 0.05))
    client, _, _ = await setup_meter(emu)
    emu.state.faults.async_validation = True
    receiver.failures = 2
    await send(client, "cus_nope", "1")
    received = await receiver.delivered(3)
    assert len({body for body, _ in received}) == 1  # the same notification, signed afresh each time
    async with aiohttp.ClientSession() as session, session.get(emu.url + "/_emulator/webhook") as r:
        [delivery] = (await r.json())["deliveries"]
    assert delivery["attempts"] == ["500", "500", "200"] and delivery["delivered"]
    with pytest.raises(stripe.SignatureVerificationError):
        emu.client().parse_event_notification(received[0][0], received[0][1], "whsec_other")


async def test_v2_events_need_an_api_key(emu: Emulator) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(emu.url + "/v2/core/events/evt_x") as r:
            assert r.status == 401
        async with session.get(
            emu.url + "/v2/core/events/evt_x", headers={"Authorization": "Bearer sk_test_x"}
        ) as r:
            assert r.status == 404


# --- meters: pre-aggregated windows, custom payload keys -----------------------------------------


@pytest.mark.parametrize(("window", "expected"), [("hour", [7.0, 3.0]), ("day", [7.0])])
async def test_event_time_window_counts_the_newest_event_per_window(
    emu: Emulator, window: str, expected: list[float]
) -> None:
    client = emu.client()
    customer = (await call(client.v1.customers.create, {"email": "w@example.com"})).id
    meter = await call(
        client.v1.billing.meters.create,
        {
            "display_name": "Seats",
            "event_name": "api_calls",
            "default_aggregation": {"formula": "sum"},
            "event_time_window": window,
        },
    )
    assert meter.event_time_window == window
    hour = START - 3 * 3600
    for offset, value in [(10, "1"), (50, "3"), (50, "3"), (3600 + 5, "9"), (3600 + 20, "7")]:
        await send(client, customer, value, timestamp=hour + offset)
    assert await totals(client, meter.id, customer, value_grouping_window="hour") == expected


async def test_custom_payload_keys(emu: Emulator) -> None:
    client = emu.client()
    customer = (await call(client.v1.customers.create, {"email": "k@example.com"})).id
    created = await call(
        client.v1.billing.meters.create,
        {
            "display_name": "Units",
            "event_name": "units",
            "default_aggregation": {"formula": "sum"},
            "customer_mapping": {"type": "by_id", "event_payload_key": "account"},
            "value_settings": {"event_payload_key": "units"},
        },
    )
    for meter in (created, await call(client.v1.billing.meters.retrieve, created.id)):
        assert (
            meter.customer_mapping.event_payload_key == "account" and meter.customer_mapping.type == "by_id"
        )
        assert meter.value_settings.event_payload_key == "units"
    listed = await call(client.v1.billing.meters.list, {"status": "active"})
    assert listed.data[0].value_settings.event_payload_key == "units"

    async def units(payload: dict[str, str]) -> Any:
        params = {"event_name": "units", "payload": payload, "timestamp": START - 60}
        return await call(client.v1.billing.meter_events.create, params)

    for value in ("12", "-5", "999999999999999"):
        await units({"account": customer, "units": value})
    for payload, param, code in [
        (
            {"stripe_customer_id": customer, "value": "1"},
            "payload[account]",
            "meter_event_no_customer_defined",
        ),
        ({"account": customer, "value": "1"}, "payload[units]", "meter_event_invalid_value"),
        ({"account": customer, "units": "2.5"}, "payload[units]", "meter_event_invalid_value"),
        ({"account": customer, "units": "1e3"}, "payload[units]", "meter_event_invalid_value"),
        (
            {"account": customer, "units": "1000000000000000"},
            "payload[units]",
            "meter_event_value_too_many_digits",
        ),
        ({"account": "cus_nope", "units": "1"}, "payload[account]", "meter_event_customer_not_found"),
    ]:
        with pytest.raises(stripe.InvalidRequestError) as caught:
            await units(payload)
        assert (caught.value.param, caught.value.code) == (param, code)
    assert await totals(client, created.id, customer) == [float(12 - 5 + 999999999999999)]


# --- the shared operations budget ----------------------------------------------------------------


async def test_budget_answers_429_above_25_operations_in_one_second() -> None:
    state = EmulatorState(clock=ManualClock(START))  # the test-mode default: 25 operations/s
    now = [1000.0]
    state.budget.clock = lambda: now[0]  # a frozen second
    server = TestServer(create_app(state), host="127.0.0.1")
    await server.start_server()
    try:
        emu = Emulator(state, ManualClock(START), f"http://127.0.0.1:{server.port}")
        client, customer, meter = await setup_meter(emu)  # 2 writes
        for i in range(11):  # reads and writes share it
            await call(client.v1.billing.meters.retrieve, meter)
            await create_event(client, event_params(customer, identifier=f"b{i}"), f"key-{i}")
        await call(client.v1.billing.meters.list)  # the 25th operation
        with pytest.raises(stripe.RateLimitError) as caught:
            await create_event(client, event_params(customer, identifier="b-late"), "key-late")
        assert caught.value.http_status == 429 and error_body(caught.value)["error"]["code"] == "rate_limit"
        with pytest.raises(stripe.RateLimitError):
            await call(client.v1.billing.meters.retrieve, meter)
        now[0] += 1.0
        late = await create_event(client, event_params(customer, identifier="b-late"), "key-late")
        assert "Idempotent-Replayed" not in late.last_response.headers  # the 429 was not stored
        assert len(state.meter_events(meter)) == 12
        async with (  # settable like a fault
            aiohttp.ClientSession() as session,
            session.post(emu.url + "/_emulator/faults", json={"ops_per_second": 0}) as r,
        ):
            assert (await r.json())["ops_per_second"] == 0
        for _ in range(30):
            await call(client.v1.billing.meters.retrieve, meter)
    finally:
        await server.close()


async def test_budget_holds_in_real_time() -> None:
    state = EmulatorState(clock=ManualClock(START))
    server = TestServer(create_app(state), host="127.0.0.1")
    await server.start_server()
    headers = {"Authorization": "Bearer sk_test_x"}
    try:
        async with aiohttp.ClientSession() as session:

            async def one() -> int:
                async with session.get(f"http://127.0.0.1:{server.port}/v1/customers", headers=headers) as r:
                    return r.status

            started = time.monotonic()
            statuses = await asyncio.gather(*(one() for _ in range(60)))
            elapsed = time.monotonic() - started
    finally:
        await server.close()
    ok = statuses.count(200)
    assert set(statuses) <= {200, 429}
    assert 25 <= ok <= 25 + 25 * elapsed + 1, (ok, elapsed)
    if elapsed < 1:
        assert statuses.count(429) > 0
