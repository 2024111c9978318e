"""Rate limiting, in one place: a token bucket, and a bounded set of them kept per name.

A ``TokenBucket`` holds at most ``burst`` tokens and gains ``rate`` tokens a second; each call that
is let through takes one. It reads no clock: every method is told ``now`` (seconds on any monotonic
clock), so callers pick their clock and tests drive it by hand (``RateLimiter.take`` reads the
monotonic clock only when not told).

Its users: the API's per-tenant and per-client limits (``RateLimiter`` here, built in
``api/app.py`` and ``api/limits.py``), the Stripe call budget (``adapters/stripe/budget.py``: a
bucket with burst 1, which lets calls through exactly ``1/rate`` seconds apart), and the Stripe
emulator's operations budget (``tools/stripe_emulator/ops_budget.py``: a bucket holding one second of
operations).

When the next token is there is computed as a time, ``at + (1 - tokens) / rate`` from the state the
bucket was last left in, so a bucket with burst 1 lets calls through at exactly ``last + 1/rate``
(the same floating-point sum as a "next call at" timestamp), and a caller that waits what
``wait(now)`` returned finds the token there (unless ``now + wait`` rounds below it: ask again).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict

MAX_NAMES = 10_000  # buckets a RateLimiter keeps by default; the least recently seen go first


class TokenBucket:
    """At most ``burst`` tokens, ``rate`` more a second; full until first used.

    ``rate`` and ``burst`` may be changed between calls: the time since the bucket was last used
    then fills it at the new rate, up to the new burst. A bucket whose ``burst`` is below 1 never
    holds a whole token, and one whose ``rate`` is 0 or less is never refilled.
    """

    __slots__ = ("_at", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float = 1.0) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = 0.0  # tokens there were at `_at`
        self._at: float | None = None  # when last used; None: never, the bucket is full

    def tokens(self, now: float) -> float:
        """How many tokens there are at ``now`` (a fraction while one is filling up)."""
        if self._at is None:
            return self.burst
        return min(self.burst, self._tokens + (now - self._at) * self.rate)

    def ready_at(self) -> float:
        """When the next whole token is there: ``-inf`` if one is already, ``inf`` if never."""
        if self.burst < 1:
            return math.inf
        if self._at is None or self._tokens >= 1:
            return -math.inf
        if self.rate <= 0:
            return math.inf
        return self._at + (1 - self._tokens) / self.rate

    def wait(self, now: float) -> float:
        """Seconds from ``now`` until a token is there (0.0: there is one); takes nothing."""
        return max(0.0, self.ready_at() - now)

    def take(self, now: float) -> float:
        """Take a token: 0.0 when there was one, else the seconds until there will be (none taken).

        Either way the bucket is brought up to ``now`` (refilled, capped at ``burst``)."""
        wait = self.wait(now)
        tokens = self.tokens(now)
        self._at = now
        # the token was there, so any shortfall below 1 is rounding: never go below empty
        self._tokens = tokens if wait > 0 else max(0.0, tokens - 1)
        return wait

    def give_back(self) -> None:
        """Return a token taken for something that turned out not to count (up to ``burst``)."""
        if self._at is not None:
            self._tokens = min(self.burst, self._tokens + 1)


class RateLimiter:
    """A token bucket per name: ``rate`` tokens a second, up to ``burst`` (default ``2 * rate``).

    ``burst`` is at least 1, so every name gets its first call through. At most ``max_names``
    buckets are kept; the least recently used is forgotten (it starts full again), so made-up names
    cannot grow memory.
    """

    def __init__(self, rate: float, burst: float | None = None, max_names: int = MAX_NAMES) -> None:
        self.rate = rate
        self.burst = max(2 * rate, 1.0) if burst is None else max(burst, 1.0)
        self.max_names = max_names
        self.buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, name: str, now: float | None = None) -> float:
        """0.0 when allowed (one token taken), else the seconds until a token is there (``inf``:
        never, with ``rate`` 0). ``now`` defaults to the monotonic clock."""
        now = time.monotonic() if now is None else now
        bucket = self.buckets.get(name)
        if bucket is None:
            bucket = self.buckets[name] = TokenBucket(self.rate, self.burst)
        self.buckets.move_to_end(name)
        while len(self.buckets) > self.max_names:
            self.buckets.popitem(last=False)
        return bucket.take(now)

    def give_back(self, name: str) -> None:
        """Return a token taken for something that turned out not to count against ``name``."""
        bucket = self.buckets.get(name)
        if bucket is not None:
            bucket.give_back()
