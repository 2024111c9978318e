"""The writer on Stripe's v2 meter event stream, against the emulator (one manual clock, stripe_world):
up to 100 events a request, one session token refreshed before its 15 minutes, every counter hour
counted once through timeouts, expired tokens and a change of API, and no one-second window above the
configured budgets. The stream's shapes: stripe-mock does not know the v2 paths (it answers
"Unrecognized request URL"), so they are checked against stripe-python's types, which Stripe generates
from its OpenAPI spec (tests/unit/adapters/stripe/test_stream.py), and against the emulator here."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
import stripe

from stripemeter.adapters.stripe.budget import EventBudget, StripeBudget
from stripemeter.adapters.stripe.client import make_client
from stripemeter.adapters.stripe.stream import MAX_EVENTS, stream_params
from stripemeter.core.push_plan import Request
from stripemeter.tools.stripe_emulator.meter_stream import SESSION_SECONDS, STREAM_PATH
from tests.integration.stripe_world import START, World, world

__all__ = ["world"]

HOUR = START - timedelta(hours=1)
RETRY_AFTER_S = 120  # past any failed attempt's backoff (at most 30 s)


async def customers_counted(world: World, n: int, metric: str = "requests") -> list[str]:
    """``n`` customers mapped to one meter, each with ``i + 1`` units in HOUR."""
    await world.map_metric(metric, world.meter(metric))
    refs = [f"c{i}" for i in range(n)]
    for i, ref in enumerate(refs):
        await world.map_customer(ref)
        await world.count(metric, ref, HOUR, i + 1)
    return refs


def stream_requests(world: World) -> int:
    return world.state.requests[f"POST {STREAM_PATH}"]


def sessions_created(world: World) -> int:
    return world.state.requests["POST /v2/billing/meter_event_session"]


def assert_held_once(world: World, refs: list[str]) -> None:
    assert {ref: world.held(ref) for ref in refs} == {ref: i + 1 for i, ref in enumerate(refs)}


async def test_v2_sends_up_to_100_events_a_request_on_one_session(world: World) -> None:
    world.writer.api = "v2"
    refs = await customers_counted(world, 250)
    assert await world.push() == 250
    assert_held_once(world, refs)
    assert stream_requests(world) == 3  # 100 + 100 + 50
    assert sessions_created(world) == 1
    assert world.state.requests["POST /v1/billing/meter_events"] == 0
    rows = await world.rows("SELECT status FROM stripe_pushes WHERE tenant_id = %s", world.tenant)
    assert {r["status"] for r in rows} == {"synced"}


async def test_a_batch_retried_after_a_timeout_is_counted_once(world: World) -> None:
    """Stripe took the request, the answer never came (a timeout): the same events go again, and Stripe
    keeps one event per identifier."""
    world.writer.api = "v2"
    refs = await customers_counted(world, 30)
    world.state.faults.update({"lost_responses": 1, "path_prefix": STREAM_PATH})
    assert await world.push() == 0
    assert len(world.state.events) == 30  # it landed
    world.clock.advance(RETRY_AFTER_S)
    assert await world.push() == 30
    assert world.state.stream_duplicates == 30
    assert_held_once(world, refs)
    assert stream_requests(world) == 2


async def test_a_request_pending_from_v1_goes_out_on_v2_with_its_identifier(world: World) -> None:
    """The setting changes while a v1 request is pending (it landed, its answer was lost): the stream
    sends the recorded request, with the same identifier, and Stripe counts it once."""
    refs = await customers_counted(world, 3)
    world.state.faults.update({"lost_responses": 3, "path_prefix": "/v1/billing/meter_events"})
    assert await world.push() == 0
    assert len(world.state.events) == 3
    world.writer.api = "v2"
    world.clock.advance(RETRY_AFTER_S)
    assert await world.push() == 3
    assert world.state.stream_duplicates == 3
    assert_held_once(world, refs)
    # and usage counted a moment after the change goes out on v2 only
    await world.count("requests", "c0", HOUR, 5)
    v1_before = world.state.requests["POST /v1/billing/meter_events"]
    assert await world.push() == 1
    assert world.state.requests["POST /v1/billing/meter_events"] == v1_before
    assert world.held("c0") == 5


async def test_the_session_token_is_refreshed_before_it_expires(world: World) -> None:
    world.writer.api = "v2"
    await customers_counted(world, 2)
    assert await world.push() == 2
    assert sessions_created(world) == 1
    world.clock.advance(12 * 60)  # 3 minutes left: the token is used again
    await world.count("requests", "c0", HOUR, 10)
    assert await world.push() == 1
    assert sessions_created(world) == 1
    world.clock.advance(60 + 1)  # under 2 minutes left: a new session before the request
    await world.count("requests", "c0", HOUR, 20)
    assert await world.push() == 1
    assert sessions_created(world) == 2
    assert world.held("c0") == 20


async def test_a_token_stripe_says_expired_is_replaced_and_the_request_sent_again(world: World) -> None:
    """Stripe's clock runs ahead of ours past the token's end: 401 expired, a new session, the same
    request again, all in the same round."""
    world.writer.api = "v2"
    refs = await customers_counted(world, 5)
    await world.writer.session.token()
    world.state.clock_offset += SESSION_SECONDS  # Stripe's clock only
    assert await world.push() == 5
    assert sessions_created(world) == 2
    assert stream_requests(world) == 2  # refused (401), then sent with the new token
    assert_held_once(world, refs)


async def test_events_stripe_refuses_after_the_answer_become_error_reports(world: World) -> None:
    world.writer.api = "v2"
    await world.map_metric("requests", world.meter("requests"))
    await world.map_customer("known")
    await world.map_customer("gone", stripe_id="cus_doesnotexist")
    await world.count("requests", "known", HOUR, 4)
    await world.count("requests", "gone", HOUR, 6)
    assert await world.push() == 2  # both received: validation comes after
    assert world.held("known") == 4
    reports = world.state.error_reports
    assert [(r["code"], r["identifier"].startswith("sm_")) for r in reports] == [
        ("meter_event_customer_not_found", True)
    ]


async def test_the_stream_refuses_what_stripe_refuses(world: World) -> None:
    """More than 100 events, a secret key or unknown token, a timestamp that is not RFC 3339: refused
    whole (nothing counted)."""
    http = stripe.AIOHTTPClient()
    client = make_client("sk_test_world", world.base, http)
    try:
        event_name = world.meter("requests")
        customer = await world.map_customer("c")
        requests = [
            Request(f"id-{uuid.uuid4().hex}", event_name, {"stripe_customer_id": customer, "value": "1"},
                    int(START.timestamp()), 1, 1)
            for _ in range(MAX_EVENTS + 1)
        ]  # fmt: skip
        session = await client.v2.billing.meter_event_session.create_async()
        token: Any = {"api_key": session.authentication_token}
        body = {"events": [dict(e) for e in stream_params(requests[:MAX_EVENTS])["events"]]}
        body["events"].append(dict(stream_params(requests[MAX_EVENTS:])["events"][0]))
        with pytest.raises(stripe.InvalidRequestError, match="at most 100"):
            await client.v2.billing.meter_event_stream.create_async(body, token)  # type: ignore[arg-type]
        with pytest.raises(stripe.AuthenticationError):
            await client.v2.billing.meter_event_stream.create_async(stream_params(requests[:1]))
        one = dict(stream_params(requests[:1])["events"][0])
        one["timestamp"] = int(START.timestamp())  # v1's unix seconds
        with pytest.raises(stripe.InvalidRequestError, match="RFC 3339"):
            await client.v2.billing.meter_event_stream.create_async({"events": [one]}, token)  # type: ignore[list-item]
        assert world.state.events == []
        await client.v2.billing.meter_event_stream.create_async(stream_params(requests[:MAX_EVENTS]), token)
        assert world.held("c") == MAX_EVENTS
    finally:
        await http.close_async()  # type: ignore[no-untyped-call]


@pytest.mark.parametrize("api", ["v1", "v2"])
async def test_no_one_second_window_holds_more_calls_or_events_than_the_budget(
    world: World, api: str
) -> None:
    """A burst of pending counter hours (here 300; the benchmark's catch-up has 100,000): the calls Stripe
    receives in each second of real time never exceed STRIPEMETER_STRIPE_CALLS_PER_SECOND, nor the
    stream's events STRIPEMETER_STRIPE_STREAM_EVENTS_PER_SECOND. A property of the sending, not a
    timing: whatever the machine's speed, no window may hold more."""
    calls_per_second, events_per_second = (60.0, 10_000.0) if api == "v1" else (4.0, 120.0)
    world.writer.api = api
    world.writer.budget = StripeBudget(calls_per_second)
    world.writer.events = EventBudget(events_per_second)
    world.writer.batch_size = min(MAX_EVENTS, int(events_per_second))
    world.state.faults.update({"stream_events_per_second": events_per_second})
    refs = await customers_counted(world, 300)
    world.state.calls_by_second.clear()
    delivered = [await world.push() for _ in range(3)]  # a v1 round takes 200 streams
    assert sum(delivered) == 300
    assert_held_once(world, refs)
    assert max(world.state.calls_by_second.values()) <= calls_per_second
    assert sum(world.state.throttled_by_second.values()) == 0
    if api == "v2":
        assert max(world.state.stream_limit.events.values()) <= events_per_second
        assert len(world.state.calls_by_second) >= 3  # 300 events at 120 a second: spread over 3 s


async def test_auto_sends_a_quiet_round_on_v1_and_a_burst_on_the_stream(world: World) -> None:
    world.writer.api = "auto"
    world.writer.budget = StripeBudget(100.0)  # v1 while a round needs at most 50 events a second
    await customers_counted(world, 5)
    assert await world.push() == 5
    assert (world.state.requests["POST /v1/billing/meter_events"], stream_requests(world)) == (5, 0)
    for i in range(5, 205):  # the top of the hour: 200 counters at once
        await world.map_customer(f"c{i}")
        await world.count("requests", f"c{i}", HOUR, 1)
    assert await world.push() == 200
    assert (world.state.requests["POST /v1/billing/meter_events"], stream_requests(world)) == (5, 2)


async def test_a_crash_between_recording_and_sending_loses_and_doubles_nothing(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch's requests are committed as pending, then the process dies before the request: the next
    round sends exactly the recorded requests."""
    world.writer.api = "v2"
    refs = await customers_counted(world, 20)

    async def crash(batch: Any) -> Any:
        raise RuntimeError("killed")

    monkeypatch.setattr(world.writer, "_stream", crash)
    with pytest.raises(RuntimeError, match="killed"):
        await world.push()
    rows = await world.rows(
        "SELECT status, pending_request FROM stripe_pushes WHERE tenant_id = %s", world.tenant
    )
    assert {r["status"] for r in rows} == {"pending"} and all(r["pending_request"] for r in rows)
    recorded = {r["pending_request"]["identifier"] for r in rows}
    monkeypatch.undo()
    assert await world.push() == 20
    assert {e.identifier for e in world.state.events} == recorded
    assert_held_once(world, refs)


async def test_a_request_pending_from_v2_goes_out_on_v1_and_stripe_says_it_has_it(world: World) -> None:
    """Back from v2 to v1 while a stream request is pending (it landed, its answer was lost): v1 sends
    the recorded request, Stripe answers that it has the identifier, and that counts as delivered."""
    world.writer.api = "v2"
    refs = await customers_counted(world, 4)
    world.state.faults.update({"lost_responses": 1, "path_prefix": STREAM_PATH})
    assert await world.push() == 0
    world.writer.api = "v1"
    world.clock.advance(RETRY_AFTER_S)
    assert await world.push() == 4
    assert world.state.requests["POST /v1/billing/meter_events"] == 4
    assert len(world.state.events) == 4
    assert_held_once(world, refs)
