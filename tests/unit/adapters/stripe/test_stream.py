"""The v2 meter event stream's pieces: its request shape against Stripe's documented schema (the types
stripe-python generates from Stripe's OpenAPI spec: stripe-mock has no v2 paths), the session token's
refresh on an injected clock, the events budget, and the choice of API."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, get_type_hints

import pytest
import stripe
from stripe.params.v2.billing import MeterEventStreamCreateParams, MeterEventStreamCreateParamsEvent

from stripemeter.adapters.stripe.budget import EventBudget
from stripemeter.adapters.stripe.stream import (
    MAX_EVENTS,
    REFRESH_MARGIN,
    SESSION_EXPIRED,
    StreamSession,
    send_batch,
    stream_params,
)
from stripemeter.core.push_plan import Request
from stripemeter.core.send_api import V1_SHARE, choose_api, projected_rate
from stripemeter.domain.clock import Clock

START = datetime(2026, 12, 1, 10, tzinfo=UTC)


def request(i: int = 0) -> Request:
    return Request(f"sm_{i:024x}_1", "api_requests", {"stripe_customer_id": "cus_1", "value": "3"},
                   int(START.timestamp()) + i, 3, 3)  # fmt: skip


def test_a_stream_request_has_the_documented_shape() -> None:
    params = stream_params([request(i) for i in range(MAX_EVENTS)])
    assert set(params) == set(get_type_hints(MeterEventStreamCreateParams))
    event_keys = get_type_hints(MeterEventStreamCreateParamsEvent)
    required = MeterEventStreamCreateParamsEvent.__required_keys__
    for event in params["events"]:
        assert set(event) <= set(event_keys) and required <= set(event)
        payload: Any = event["payload"]
        assert all(isinstance(v, str) for v in payload.values())
    first = params["events"][0]
    # v2 takes RFC 3339 where v1 takes unix seconds; the identifier is the one v1 would send
    assert first["timestamp"] == "2026-12-01T10:00:00.000Z"
    assert datetime.fromisoformat(first["timestamp"].replace("Z", "+00:00")) == START
    assert first["identifier"] == request(0).identifier


@pytest.mark.parametrize("n", [0, MAX_EVENTS + 1])
def test_a_stream_request_carries_1_to_100_events(n: int) -> None:
    with pytest.raises(ValueError, match="1 to 100"):
        stream_params([request(i) for i in range(n)])


class ManualClock(Clock):
    def __init__(self) -> None:
        self.at = START.timestamp()

    def __call__(self) -> float:
        return self.at


async def test_the_token_is_replaced_two_minutes_before_it_expires_on_our_clock() -> None:
    clock = ManualClock()
    created: list[str] = []

    async def create_async() -> Any:
        # Stripe's clock is 10 minutes behind ours: only the lifetime it states counts
        stripe_now = clock.utc() - timedelta(minutes=10)
        created.append(f"token_{len(created)}")
        return SimpleNamespace(authentication_token=created[-1], created=stripe_now.isoformat(),
                               expires_at=(stripe_now + timedelta(minutes=15)).isoformat())  # fmt: skip

    async def call(fn: Any, *args: Any) -> Any:
        return await fn(*args)

    client = SimpleNamespace(v2=SimpleNamespace(billing=SimpleNamespace(
        meter_event_session=SimpleNamespace(create_async=create_async))))  # fmt: skip
    session = StreamSession(client, call, clock)  # type: ignore[arg-type]
    assert await session.token() == "token_0"
    clock.at += (timedelta(minutes=15) - REFRESH_MARGIN).total_seconds() - 1
    assert await session.token() == "token_0"
    clock.at += 1
    assert await session.token() == "token_1"
    session.expired()  # Stripe said so
    assert await session.token() == "token_2"
    assert session.created == 3


async def test_an_expired_token_is_told_apart_from_other_failures() -> None:
    def failing(error: stripe.StripeError) -> Any:
        async def create_async(params: Any, options: Any) -> None:
            raise error

        return SimpleNamespace(v2=SimpleNamespace(billing=SimpleNamespace(
            meter_event_stream=SimpleNamespace(create_async=create_async))))  # fmt: skip

    expired = stripe.TemporarySessionExpiredError("expired", http_status=401, code=SESSION_EXPIRED)
    result = await send_batch(failing(expired), "token", [request()])
    assert (result.outcome, result.code) == ("transient", SESSION_EXPIRED)
    limited = await send_batch(failing(stripe.RateLimitError("slow", http_status=429)), "t", [request()])
    assert limited.outcome == "rate_limited"
    lost = await send_batch(failing(stripe.APIConnectionError("timed out")), "t", [request()])  # type: ignore[no-untyped-call]
    assert lost.outcome == "unreachable"


async def test_no_second_holds_more_events_than_the_events_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]

    async def sleep(seconds: float) -> None:
        clock[0] += seconds

    monkeypatch.setattr(asyncio, "sleep", sleep)
    budget = EventBudget(250, monotonic=lambda: clock[0])
    rng = random.Random(7)
    sent: list[tuple[float, int]] = []
    idle = 0.0
    for _ in range(400):
        gap = rng.choice([0.0, 0.0, 0.01, 0.3])
        clock[0] += gap
        idle += gap
        n = rng.randint(1, MAX_EVENTS)
        await budget.acquire(n)
        sent.append((clock[0], n))
    for start, _ in sent:  # every window that opens with a request
        assert sum(n for at, n in sent if start <= at < start + 1.0) <= 250
    # and it waits no more than it must: a request of up to 100 fits once 150 of the window are free
    assert clock[0] - idle < sum(n for _, n in sent) / (250 - MAX_EVENTS) + 1.0


def test_auto_moves_to_the_stream_when_v1_would_take_over_half_the_budget() -> None:
    assert choose_api("auto", projected_rate(10, 1.0), 20.0) == "v1"
    assert choose_api("auto", projected_rate(11, 1.0), 20.0) == "v2"
    assert choose_api("auto", projected_rate(int(V1_SHARE * 1000), 1.0), 1000.0) == "v1"
    assert choose_api("v1", 1e9, 1.0) == "v1"
    assert choose_api("v2", 0.0, 1.0) == "v2"
    with pytest.raises(ValueError, match="v1, v2, auto"):
        choose_api("v3", 0.0, 1.0)
