"""The token bucket and the bounded per-name limiter (stripemeter/domain/rates.py), on a hand-driven
clock; and that they decide as the limiters they replaced did."""

from __future__ import annotations

import math
import random
from collections import OrderedDict

import pytest

from stripemeter.domain.rates import MAX_NAMES, RateLimiter, TokenBucket


def test_a_bucket_starts_full_then_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3)
    assert bucket.tokens(100.0) == 3
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(100.0) == pytest.approx(0.5)  # refused: one more every 1/rate s
    assert bucket.wait(100.25) == pytest.approx(0.25)
    assert bucket.take(100.5) == 0.0
    assert bucket.tokens(100.5) == pytest.approx(0.0)


def test_a_bucket_holds_at_most_its_burst() -> None:
    bucket = TokenBucket(rate=10.0, burst=2)
    bucket.take(0.0)
    assert bucket.tokens(1000.0) == 2  # idle for long: still only 2
    assert [bucket.take(1000.0) for _ in range(3)][:2] == [0.0, 0.0]
    assert bucket.take(1000.0) > 0


def test_wait_takes_nothing_and_waiting_what_it_says_is_enough() -> None:
    bucket = TokenBucket(rate=3.0, burst=1)
    assert bucket.wait(0.0) == 0.0 and bucket.wait(0.0) == 0.0  # peeking does not use the token
    now = 0.0
    for _ in range(1000):
        now += bucket.wait(now)
        assert bucket.take(now) == 0.0  # exactly when wait said: the token is there
        assert bucket.take(now) > 0


def test_a_refused_take_costs_nothing() -> None:
    bucket = TokenBucket(rate=1.0, burst=1)
    bucket.take(0.0)
    for t in (0.1, 0.2, 0.5, 0.9):
        assert bucket.take(t) == pytest.approx(1.0 - t)
    assert bucket.take(1.0) == 0.0


def test_give_back_returns_a_token_up_to_the_burst() -> None:
    bucket = TokenBucket(rate=1.0, burst=2)
    bucket.give_back()  # never used: already full
    assert bucket.tokens(0.0) == 2
    bucket.take(0.0)
    bucket.take(0.0)
    bucket.give_back()
    assert bucket.take(0.0) == 0.0 and bucket.take(0.0) > 0
    bucket.give_back()
    bucket.give_back()
    bucket.give_back()
    assert bucket.tokens(0.0) == 2


def test_rate_zero_never_refills_and_burst_below_one_never_lets_through() -> None:
    bucket = TokenBucket(rate=0.0, burst=2)
    assert [bucket.take(t) for t in (0.0, 1.0, 2.0)] == [0.0, 0.0, math.inf]
    assert bucket.take(1e9) == math.inf
    assert TokenBucket(rate=0.5, burst=0.5).take(0.0) == math.inf


def test_changing_rate_and_burst_applies_from_the_last_use_on() -> None:
    bucket = TokenBucket(rate=1.0, burst=1)
    bucket.take(0.0)
    bucket.rate = bucket.burst = 10.0
    assert bucket.tokens(0.5) == pytest.approx(5.0)  # the half second fills at the new rate
    bucket.rate, bucket.burst = 100.0, 2.0
    assert bucket.tokens(0.5) == 2.0  # capped at the new burst


def test_burst_one_lets_calls_through_exactly_one_interval_apart() -> None:
    """The spacing ``StripeBudget`` had: next call at ``last + 1/rate``, the same float sum."""
    rng = random.Random(7)
    for rate in (10.0, 3.0, 25.0, 1000.0, 0.7):
        bucket = TokenBucket(rate, burst=1)
        next_call = 0.0  # the old budget's state: when the next call may start
        now = rng.uniform(0, 5)
        for _ in range(2000):
            old_wait = max(next_call, now) - now
            assert bucket.wait(now) == old_wait  # exactly, not approximately
            if old_wait == 0:
                next_call = now + 1.0 / rate
                assert bucket.take(now) == 0.0
                assert bucket.ready_at() == next_call
            # the next caller comes at the boundary itself, just before or after it, or any time
            now = rng.choice([next_call, math.nextafter(next_call, 0), now + rng.expovariate(rate)])


class OldRateLimiter:
    """api/limits.py's limiter before the token bucket moved to the domain, as it was."""

    def __init__(self, rate: float, burst: float | None = None, max_names: int = 10_000):
        self.rate = rate
        self.burst = max(2 * rate, 1.0) if burst is None else max(burst, 1.0)
        self.max_names = max_names
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, name: str, now: float) -> float:
        tokens, at = self.buckets.get(name, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens >= 1:
            self._set(name, tokens - 1, now)
            return 0.0
        self._set(name, tokens, now)
        return (1 - tokens) / self.rate if self.rate > 0 else math.inf

    def give_back(self, name: str) -> None:
        if name in self.buckets:
            tokens, at = self.buckets[name]
            self.buckets[name] = (min(self.burst, tokens + 1), at)

    def _set(self, name: str, tokens: float, now: float) -> None:
        self.buckets[name] = (tokens, now)
        self.buckets.move_to_end(name)
        while len(self.buckets) > self.max_names:
            self.buckets.popitem(last=False)


@pytest.mark.parametrize(("rate", "burst"), [(0.5, 30), (50.0, None), (1.0, 1), (0.0, None), (7.0, 0.2)])
def test_the_limiter_decides_as_the_old_one_did(rate: float, burst: float | None) -> None:
    rng = random.Random(rate)
    old, new = OldRateLimiter(rate, burst, max_names=5), RateLimiter(rate, burst, max_names=5)
    now = 0.0
    for _ in range(5000):
        now += rng.expovariate(max(rate, 1.0) * 3)
        name = f"client-{rng.randrange(8)}"
        if rng.random() < 0.1:
            old.give_back(name)
            new.give_back(name)
            continue
        expected, got = old.take(name, now), new.take(name, now)
        assert (got == 0) == (expected == 0)
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-9)
        assert list(new.buckets) == list(old.buckets)  # the same names, least recently used first


def test_the_limiter_keeps_a_bucket_per_name_and_at_most_max_names() -> None:
    limiter = RateLimiter(1.0)
    assert limiter.burst == 2.0 and limiter.max_names == MAX_NAMES
    assert limiter.take("a", now=0) == 0.0 and limiter.take("a", now=0) == 0.0
    assert limiter.take("a", now=0) > 0 and limiter.take("b", now=0) == 0.0
    small = RateLimiter(1.0, burst=0, max_names=2)  # burst is at least 1
    assert small.take("x", now=0) == 0.0
    small.take("y", now=0)
    small.take("x", now=0)  # x used last: y goes first
    small.take("z", now=0)
    assert list(small.buckets) == ["x", "z"]
    small.give_back("y")  # forgotten: nothing to give back to
    assert "y" not in small.buckets
