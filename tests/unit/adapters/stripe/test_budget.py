"""The Stripe call budget's spacing is a token bucket with burst 1: the same waits, to the last bit,
as the "next call at" timestamp it replaced (stripemeter/adapters/stripe/budget.py)."""

from __future__ import annotations

import asyncio
import random

import pytest

from stripemeter.adapters.stripe.budget import StripeBudget


class OldStripeBudget:
    """``StripeBudget.acquire`` and its 429 pause before the spacing became a token bucket."""

    def __init__(self, calls_per_second: float, clock: list[float]):
        self.interval = 1.0 / calls_per_second
        self.clock = clock
        self._next = 0.0
        self._paused_until = 0.0

    async def acquire(self) -> None:
        while True:
            now = self.clock[0]
            start = max(self._next, self._paused_until, now)
            if start <= now:
                self._next = now + self.interval
                return
            await asyncio.sleep(start - now)

    def slow_down(self, retry_after: float) -> None:
        self._paused_until = max(self._paused_until, self.clock[0] + retry_after)


@pytest.mark.parametrize("rate", [20.0, 25.0, 3.0, 1000.0, 0.7])
async def test_acquire_waits_exactly_as_before(rate: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both budgets on one script of arrivals and 429 pauses; sleeping only moves the clock."""
    clock = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr(asyncio, "sleep", sleep)
    rng = random.Random(rate)
    script = [  # (seconds since the last call started, a 429's Retry-After just before this call)
        (rng.expovariate(rate / 2) if rng.random() < 0.7 else 0.0, rng.choice([0.3, 1.0, 2.5]))
        for _ in range(3000)
    ]
    runs: list[tuple[list[float], list[float]]] = []
    for make in (
        lambda: OldStripeBudget(rate, clock),
        lambda: StripeBudget(rate, monotonic=lambda: clock[0]),
    ):
        clock[0] = 0.0
        slept.clear()
        budget = make()
        starts = []
        for i, (gap, retry_after) in enumerate(script):
            clock[0] += gap
            if i % 97 == 0:
                budget.slow_down(retry_after=retry_after)
            await budget.acquire()
            starts.append(clock[0])
        runs.append((starts, list(slept)))
    (old_starts, old_slept), (new_starts, new_slept) = runs
    assert new_starts == old_starts and new_slept == old_slept  # ==, not approx
    assert len(old_slept) > 100  # the script did make callers wait


async def test_calls_start_one_interval_apart_and_never_in_a_burst(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]

    async def sleep(seconds: float) -> None:
        clock[0] += seconds

    monkeypatch.setattr(asyncio, "sleep", sleep)
    budget = StripeBudget(10, monotonic=lambda: clock[0])
    clock[0] = 5.0  # idle for a while: still only one call at once
    starts = []
    for _ in range(5):
        await budget.acquire()
        starts.append(clock[0])
    assert starts == pytest.approx([5.0, 5.1, 5.2, 5.3, 5.4])
