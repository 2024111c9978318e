"""The emulator is at least as strict as Stripe: idempotent answers of failed requests, lost responses,
pre-aggregated meters, custom payload keys and test mode's shared operations budget. Driven through
the real `stripe` package."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import stripe
from aiohttp.test_utils import TestServer

from stripemeter.stripe_emulator import EmulatorState, ManualClock, create_app
from tests.unit.test_stripe_emulator import START, Emulator, call, send, setup_meter, totals


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    clock = ManualClock(START)
    state = EmulatorState(clock=clock, ops_per_second=0)  # unlimited: the budget has its own tests
    server = TestServer(create_app(state), host="127.0.0.1")
    await server.start_server()
    yield Emulator(state, clock, f"http://127.0.0.1:{server.port}")
    await server.close()


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
    assert first.value.http_status == 500 and "Idempotent-Replayed" not in (first.value.headers or {})
    with pytest.raises(stripe.APIError) as again:
        await create_event(client, params, "key-1")
    assert again.value.http_status == 500 and again.value.headers["Idempotent-Replayed"] == "true"
    assert again.value.headers["Stripe-Should-Retry"] == "true"
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
    assert replayed.value.code == "no_meter" and replayed.value.headers["Idempotent-Replayed"] == "true"
    await create_event(client, event_params(customer, identifier="dup"), "key-a")
    for _ in range(2):
        with pytest.raises(stripe.InvalidRequestError) as duplicate:
            await create_event(client, event_params(customer, identifier="dup"), "key-b")
        assert "An event already exists with identifier dup" in str(duplicate.value)
    assert duplicate.value.headers["Idempotent-Replayed"] == "true"


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
        assert caught.value.http_status == 429 and caught.value.json_body["error"]["code"] == "rate_limit"
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
