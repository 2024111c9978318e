"""The Stripe emulator driven through the real `stripe` package (sync client in a worker thread)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import pytest
import stripe
from aiohttp.test_utils import TestServer

from stripemeter.tools.stripe_emulator import EmulatorState, ManualClock, create_app

DAY = 1_749_945_600  # a UTC midnight
START = DAY + 12 * 3600
SUM = {"formula": "sum"}
UNLIMITED = 0  # operations per second: these tests are not about Stripe's rate limit
T = TypeVar("T")


@dataclass
class Emulator:
    state: EmulatorState
    clock: ManualClock
    url: str

    def client(self, key: str = "sk_test_emulator", retries: int = 0) -> stripe.StripeClient:
        addresses: Any = {"api": self.url, "meter_events": self.url}
        return stripe.StripeClient(key, base_addresses=addresses, max_network_retries=retries)


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    clock = ManualClock(START)
    state = EmulatorState(clock=clock, ops_per_second=UNLIMITED)
    server = TestServer(create_app(state), host="127.0.0.1")
    await server.start_server()
    yield Emulator(state, clock, f"http://127.0.0.1:{server.port}")
    await server.close()


async def call(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(fn, *args)


def headers(error: stripe.StripeError) -> dict[str, str]:
    """The response headers of a failed request (typed Optional; the `stripe` package sets `{}` if none)."""
    assert error.headers is not None
    return error.headers


def error_body(error: stripe.StripeError) -> dict[str, Any]:
    """The decoded JSON body of a failed request (typed `object` by the `stripe` package)."""
    assert isinstance(error.json_body, dict)
    return error.json_body


async def setup_meter(emu: Emulator, formula: str = "sum") -> tuple[stripe.StripeClient, str, str]:
    client = emu.client()
    customer = await call(client.v1.customers.create, {"email": "a@example.com"})
    meter = await call(
        client.v1.billing.meters.create,
        {"display_name": "API calls", "event_name": "api_calls", "default_aggregation": {"formula": formula}},
    )
    return client, customer.id, meter.id


async def send(client: stripe.StripeClient, customer: str, value: str, **extra: Any) -> Any:
    params = {"event_name": "api_calls", "payload": {"stripe_customer_id": customer, "value": value}, **extra}
    return await call(client.v1.billing.meter_events.create, params)


async def totals(client: stripe.StripeClient, meter: str, customer: str, **extra: Any) -> list[float]:
    """Aggregated values over the test day (newest first); `extra` overrides or adds params."""
    params = {"customer": customer, "start_time": DAY, "end_time": DAY + 86400}
    params.update(extra)
    page = await call(client.v1.billing.meters.event_summaries.list, meter, params)
    return [s.aggregated_value for s in page.data]


# --- customers and meters ----------------------------------------------------------------------


async def test_customers_create_retrieve_list(emu: Emulator) -> None:
    client = emu.client()
    created = [
        await call(client.v1.customers.create, {"email": f"{i}@x.io", "metadata": {"n": str(i)}})
        for i in range(3)
    ]
    assert created[0].metadata is not None
    assert created[0].id.startswith("cus_") and created[0].metadata["n"] == "0"
    again = await call(client.v1.customers.retrieve, created[1].id)
    assert again.email == "1@x.io"
    first = await call(client.v1.customers.list, {"limit": 2})
    assert [c.id for c in first.data] == [created[2].id, created[1].id] and first.has_more
    rest = await call(client.v1.customers.list, {"limit": 2, "starting_after": created[1].id})
    assert [c.id for c in rest.data] == [created[0].id] and not rest.has_more
    every = await call(lambda: list(first.auto_paging_iter()))
    assert [c.id for c in every] == [c.id for c in reversed(created)]
    with pytest.raises(stripe.InvalidRequestError) as caught:
        await call(client.v1.customers.retrieve, "cus_missing")
    assert caught.value.http_status == 404 and caught.value.code == "resource_missing"


async def test_meter_lifecycle(emu: Emulator) -> None:
    client, _, meter_id = await setup_meter(emu)
    meter = await call(client.v1.billing.meters.retrieve, meter_id)
    assert meter.object == "billing.meter" and meter.status == "active"
    assert meter.customer_mapping.event_payload_key == "stripe_customer_id"
    assert meter.value_settings.event_payload_key == "value"
    assert meter.default_aggregation.formula == "sum"
    renamed = await call(client.v1.billing.meters.update, meter_id, {"display_name": "Calls"})
    assert renamed.display_name == "Calls"
    with pytest.raises(stripe.InvalidRequestError) as caught:
        await call(client.v1.billing.meters.update, meter_id, {"event_name": "other"})
    assert caught.value.param == "event_name"
    inactive = await call(client.v1.billing.meters.deactivate, meter_id)
    assert inactive.status == "inactive" and inactive.status_transitions.deactivated_at == START
    assert (await call(client.v1.billing.meters.list, {"status": "active"})).data == []
    assert len((await call(client.v1.billing.meters.list, {"status": "inactive"})).data) == 1
    assert (await call(client.v1.billing.meters.reactivate, meter_id)).status == "active"


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"display_name": "d", "event_name": "api_calls", "default_aggregation": SUM}, "event_name"),
        ({"display_name": "d", "event_name": "e2", "default_aggregation": {"formula": "max"}},
         "default_aggregation[formula]"),
        ({"display_name": "d", "event_name": "e3"}, "default_aggregation"),
        ({"event_name": "e4", "default_aggregation": SUM}, "display_name"),
        ({"display_name": "d", "event_name": "e5", "default_aggregation": SUM, "colour": "red"}, "colour"),
        ({"display_name": "d", "event_name": "e6", "default_aggregation": SUM,
          "customer_mapping": {"type": "by_id"}}, "customer_mapping[event_payload_key]"),
        ({"display_name": "d", "event_name": "e7", "default_aggregation": SUM,
          "customer_mapping": {"event_payload_key": "customer"}}, "customer_mapping[type]"),
        ({"display_name": "d", "event_name": "e8", "default_aggregation": SUM,
          "customer_mapping": {"event_payload_key": "customer", "type": "by_email"}},
         "customer_mapping[type]"),
        ({"display_name": "d", "event_name": "e9", "default_aggregation": SUM,
          "value_settings": {"key": "units"}}, "value_settings[event_payload_key]"),
        ({"display_name": "d", "event_name": "e11", "default_aggregation": SUM,
          "value_settings": {"event_payload_key": "units", "key": "x"}}, "value_settings[key]"),
        ({"display_name": "d", "event_name": "e10", "default_aggregation": SUM, "event_time_window": "week"},
         "event_time_window"),
        ({"display_name": "d", "event_name": "e" * 101, "default_aggregation": SUM}, "event_name"),
    ],
)  # fmt: skip
async def test_meter_create_errors(emu: Emulator, params: dict[str, Any], param: str) -> None:
    client, _, _ = await setup_meter(emu)
    with pytest.raises(stripe.InvalidRequestError) as caught:
        await call(client.v1.billing.meters.create, params)
    assert caught.value.param == param and caught.value.http_status == 400


# --- meter events and summaries ----------------------------------------------------------------


@pytest.mark.parametrize(("formula", "expected"), [("sum", 15.0), ("count", 3.0), ("last", 7.0)])
async def test_events_are_aggregated(emu: Emulator, formula: str, expected: float) -> None:
    client, customer, meter = await setup_meter(emu, formula)
    event = await send(client, customer, "5", identifier="e1", timestamp=START - 60)
    assert event.object == "billing.meter_event" and event.identifier == "e1"
    assert event.payload["value"] == "5" and event.timestamp == START - 60 and event.created == START
    await send(client, customer, "7", timestamp=START - 10)
    await send(client, customer, "3", timestamp=START - 30)
    assert await totals(client, meter, customer) == [expected]
    assert [e.value for e in emu.state.meter_events(meter)] == [5, 7, 3]


async def test_summaries_group_by_hour_and_day(emu: Emulator) -> None:
    client, customer, meter = await setup_meter(emu)
    for offset, value in [(-3 * 3600, "1"), (-3 * 3600 + 5, "2"), (-60, "4"), (-86400, "8")]:
        await send(client, customer, value, timestamp=START + offset)
    params = {
        "customer": customer,
        "start_time": DAY,
        "end_time": DAY + 86400,
        "value_grouping_window": "hour",
    }
    page = await call(client.v1.billing.meters.event_summaries.list, meter, params)
    assert [(s.start_time - DAY, s.aggregated_value) for s in page.data] == [
        (11 * 3600, 4.0),
        (9 * 3600, 3.0),
    ]
    assert page.data[0].object == "billing.meter_event_summary" and page.data[0].meter == meter
    assert page.data[0].id.startswith("mtrusg_") and page.data[0].end_time == DAY + 12 * 3600
    days = {
        "customer": customer,
        "start_time": DAY - 86400,
        "end_time": DAY + 86400,
        "value_grouping_window": "day",
    }
    page = await call(client.v1.billing.meters.event_summaries.list, meter, days)
    assert [(s.start_time, s.aggregated_value) for s in page.data] == [(DAY, 7.0), (DAY - 86400, 8.0)]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"start_time": DAY + 30}, "start_time"),
        ({"end_time": DAY + 90}, "end_time"),
        ({"start_time": DAY + 60, "value_grouping_window": "hour"}, "start_time"),
        ({"end_time": DAY + 3600, "value_grouping_window": "day"}, "end_time"),
        ({"value_grouping_window": "minute"}, "value_grouping_window"),
        ({"customer": "cus_missing"}, "customer"),
    ],
)
async def test_summary_param_errors(emu: Emulator, extra: dict[str, Any], param: str) -> None:
    client, customer, meter = await setup_meter(emu)
    params = dict(extra)  # the parameter's own dict stays whole for the next run in this process
    with pytest.raises(stripe.InvalidRequestError) as caught:
        await totals(client, meter, params.pop("customer", customer), **params)
    assert caught.value.param == param


async def test_summary_pagination(emu: Emulator) -> None:
    client, customer, meter = await setup_meter(emu)
    for hour in range(5):
        await send(client, customer, "1", timestamp=DAY + hour * 3600 + 1)
    params = {
        "customer": customer,
        "start_time": DAY,
        "end_time": DAY + 86400,
        "value_grouping_window": "hour",
    }
    first = await call(client.v1.billing.meters.event_summaries.list, meter, {**params, "limit": 2})
    assert [s.start_time for s in first.data] == [DAY + 4 * 3600, DAY + 3 * 3600] and first.has_more
    following = {**params, "limit": 2, "starting_after": first.data[-1].id}
    second = await call(client.v1.billing.meters.event_summaries.list, meter, following)
    assert [s.start_time for s in second.data] == [DAY + 2 * 3600, DAY + 3600]
    every = await call(lambda: list(first.auto_paging_iter()))
    assert [s.start_time for s in every] == [DAY + h * 3600 for h in reversed(range(5))]


@pytest.mark.parametrize(
    ("payload", "extra", "param", "code"),
    [
        ({"stripe_customer_id": "cus_nope", "value": "1"}, {}, "payload[stripe_customer_id]",
         "meter_event_customer_not_found"),
        ({"value": "1"}, {}, "payload[stripe_customer_id]", "meter_event_no_customer_defined"),
        ({"stripe_customer_id": "CUSTOMER"}, {}, "payload[value]", "meter_event_invalid_value"),
        ({"stripe_customer_id": "CUSTOMER", "value": "1.5"}, {}, "payload[value]",
         "meter_event_invalid_value"),
        ({"stripe_customer_id": "CUSTOMER", "value": "1234567890123456"}, {}, "payload[value]",
         "meter_event_value_too_many_digits"),
        ({"stripe_customer_id": "CUSTOMER", "value": "1"}, {"timestamp": START - 36 * 86400}, "timestamp",
         "timestamp_too_far_in_past"),
        ({"stripe_customer_id": "CUSTOMER", "value": "1"}, {"timestamp": START + 301}, "timestamp",
         "timestamp_in_future"),
        ({"stripe_customer_id": "CUSTOMER", "value": "1"}, {"event_name": "unknown"}, "event_name",
         "no_meter"),
    ],
)  # fmt: skip
async def test_meter_event_errors(
    emu: Emulator, payload: dict[str, str], extra: dict[str, Any], param: str, code: str
) -> None:
    client, customer, meter = await setup_meter(emu)
    payload = {k: customer if v == "CUSTOMER" else v for k, v in payload.items()}
    with pytest.raises(stripe.InvalidRequestError) as caught:
        await call(
            client.v1.billing.meter_events.create, {"event_name": "api_calls", "payload": payload, **extra}
        )
    assert (caught.value.param, caught.value.code, caught.value.http_status) == (param, code, 400)
    assert emu.state.meter_events(meter) == []


async def test_negative_values_and_inactive_meter(emu: Emulator) -> None:
    client, customer, meter = await setup_meter(emu)
    await send(client, customer, "10", timestamp=START - 60)
    await send(client, customer, "-4", timestamp=START - 60)
    assert await totals(client, meter, customer) == [6.0]
    await call(client.v1.billing.meters.deactivate, meter)
    with pytest.raises(stripe.InvalidRequestError) as caught:
        await send(client, customer, "1")
    assert caught.value.param == "event_name" and "inactive" in str(caught.value)


async def test_duplicate_identifier_refused_for_24_hours(emu: Emulator) -> None:
    client, customer, meter = await setup_meter(emu)
    await send(client, customer, "5", identifier="evt-1")
    with pytest.raises(stripe.InvalidRequestError) as caught:
        await send(client, customer, "5", identifier="evt-1")
    assert "An event already exists with identifier evt-1" in str(caught.value)
    assert caught.value.headers is not None and caught.value.headers["Stripe-Should-Retry"] == "false"
    emu.clock.advance(24 * 3600 + 1)
    await send(client, customer, "5", identifier="evt-1")
    assert len(emu.state.meter_events(meter)) == 2


async def test_cancel_adjustment(emu: Emulator) -> None:
    client, customer, meter = await setup_meter(emu)
    await send(client, customer, "5", identifier="keep", timestamp=START - 60)
    await send(client, customer, "7", identifier="drop", timestamp=START - 60)
    cancel = {"event_name": "api_calls", "type": "cancel", "cancel": {"identifier": "drop"}}
    adjustment = await call(client.v1.billing.meter_event_adjustments.create, cancel)
    assert adjustment.object == "billing.meter_event_adjustment" and adjustment.status == "complete"
    assert adjustment.cancel is not None and adjustment.cancel.identifier == "drop"
    assert await totals(client, meter, customer) == [5.0]
    assert [e.identifier for e in emu.state.meter_events(meter)] == ["keep"]
    for identifier in ("drop", "never-sent"):
        with pytest.raises(stripe.InvalidRequestError) as caught:
            await call(
                client.v1.billing.meter_event_adjustments.create,
                {**cancel, "cancel": {"identifier": identifier}},
            )
        assert caught.value.param == "cancel[identifier]"


async def test_cancel_refused_after_24_hours(emu: Emulator) -> None:
    client, customer, meter = await setup_meter(emu)
    await send(client, customer, "5", identifier="old")
    emu.clock.advance(24 * 3600 + 1)
    cancel = {"event_name": "api_calls", "type": "cancel", "cancel": {"identifier": "old"}}
    with pytest.raises(stripe.InvalidRequestError) as caught:
        await call(client.v1.billing.meter_event_adjustments.create, cancel)
    assert caught.value.param == "cancel[identifier]" and "24 hours" in str(caught.value)
    assert len(emu.state.meter_events(meter)) == 1


async def test_summary_delay_hides_recent_events(emu: Emulator) -> None:
    client, customer, meter = await setup_meter(emu)
    emu.state.faults.summary_delay = 30
    await send(client, customer, "5", timestamp=START - 60)
    assert await totals(client, meter, customer) == []
    emu.clock.advance(30)
    assert await totals(client, meter, customer) == [5.0]


# --- idempotency, auth, faults -----------------------------------------------------------------


async def test_idempotency_replay_and_conflict(emu: Emulator) -> None:
    client, customer, meter = await setup_meter(emu)
    params = {"event_name": "api_calls", "payload": {"stripe_customer_id": customer, "value": "5"}}
    options: Any = {"idempotency_key": "key-1"}
    first = await call(client.v1.billing.meter_events.create, params, options)
    again = await call(client.v1.billing.meter_events.create, params, options)
    assert again.last_response is not None
    assert (
        again.identifier == first.identifier and again.last_response.headers["Idempotent-Replayed"] == "true"
    )
    assert len(emu.state.meter_events(meter)) == 1
    changed = {**params, "payload": {"stripe_customer_id": customer, "value": "6"}}
    with pytest.raises(stripe.IdempotencyError):
        await call(client.v1.billing.meter_events.create, changed, options)


async def test_missing_or_bad_api_key(emu: Emulator) -> None:
    with pytest.raises(stripe.AuthenticationError):
        await call(emu.client(key="").v1.customers.list)
    with pytest.raises(stripe.AuthenticationError):
        await call(emu.client(key="sk_live_nope").v1.customers.list)
    async with aiohttp.ClientSession() as session, session.get(emu.url + "/v1/customers") as response:
        assert response.status == 401 and response.headers["Request-Id"].startswith("req_")
        assert (await response.json())["error"]["type"] == "invalid_request_error"
    # Basic auth with the key as user name, as `curl -u sk_test_...:` sends it
    async with aiohttp.ClientSession() as session:
        for key, status in [("sk_test_x", 200), ("sk_live_x", 401)]:
            # built by hand: aiohttp.BasicAuth is deprecated, encode_basic_auth() is new in aiohttp 3.14
            basic = {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}
            async with session.get(emu.url + "/v1/customers", headers=basic) as response:
                assert response.status == status


@pytest.mark.parametrize(
    ("params", "param"),
    [({"email": {"a": "b"}}, "email"), ({"name": "n" * 257}, "name"), ({"metadata": "x"}, "metadata"),
     ({"metadata": {"a": {"b": "c"}}}, "metadata"), ({"phone": "1"}, "phone")],
)  # fmt: skip
async def test_customer_create_errors(emu: Emulator, params: dict[str, Any], param: str) -> None:
    with pytest.raises(stripe.InvalidRequestError) as caught:
        await call(emu.client().v1.customers.create, params)
    assert caught.value.param == param and emu.state.customers == {}


async def test_unknown_route_is_a_stripe_404(emu: Emulator) -> None:
    headers = {"Authorization": "Bearer sk_test_x"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(emu.url + "/v1/nothing", headers=headers) as response,
    ):
        assert response.status == 404
        assert "Unrecognized request URL" in (await response.json())["error"]["message"]


async def test_rate_limit_burst(emu: Emulator) -> None:
    client, customer, _ = await setup_meter(emu)
    emu.state.faults.rate_limit = 2
    for _ in range(2):
        with pytest.raises(stripe.RateLimitError):
            await send(client, customer, "1")
    await send(client, customer, "1")


async def test_server_error_is_stored_for_its_key(emu: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 500 while executing is Stripe's answer for that idempotency key: the client's own retries
    (same key) get it replayed; a dropped connection is not stored, so a retry runs afresh."""
    monkeypatch.setattr(stripe._http_client.HTTPClient, "INITIAL_DELAY", 0.01)
    monkeypatch.setattr(stripe._http_client.HTTPClient, "MAX_DELAY", 0.02)
    _, customer, meter = await setup_meter(emu)
    emu.state.faults.server_errors = 1
    with pytest.raises(stripe.APIError) as caught:
        await send(emu.client(retries=2), customer, "1", identifier="stuck")
    assert caught.value.http_status == 500 and headers(caught.value)["Stripe-Should-Retry"] == "true"
    assert headers(caught.value)["Idempotent-Replayed"] == "true"  # the last of three attempts
    assert emu.state.faults.server_errors == 0 and emu.state.meter_events(meter) == []
    emu.state.faults.update({"drop_connections": 2})
    await send(emu.client(retries=3), customer, "1", identifier="retried")
    assert [e.identifier for e in emu.state.meter_events(meter)] == ["retried"]


async def test_dropped_connection(emu: Emulator) -> None:
    client, customer, _ = await setup_meter(emu)
    emu.state.faults.drop_connections = 1
    with pytest.raises(stripe.APIConnectionError):
        await send(client, customer, "1")


async def test_control_endpoints(emu: Emulator) -> None:
    client, customer, meter = await setup_meter(emu)
    async with aiohttp.ClientSession(emu.url) as session:
        async with session.post(
            "/_emulator/faults", json={"latency": 0.05, "path_prefix": "/v1/customers"}
        ) as r:
            assert (await r.json())["latency"] == 0.05
        async with session.post("/_emulator/faults", json={"bogus": 1}) as r:
            assert r.status == 400
        await send(client, customer, "3")
        async with session.get(f"/_emulator/meters/{meter}/events") as r:
            assert [e["payload"]["value"] for e in (await r.json())["data"]] == ["3"]
        async with session.post("/_emulator/clock", json={"advance": 3600}) as r:
            assert (await r.json())["now"] == START + 3600
        async with session.post("/_emulator/reset") as r:
            assert r.status == 200
    assert emu.state.meters == {} and emu.state.faults.latency == 0
