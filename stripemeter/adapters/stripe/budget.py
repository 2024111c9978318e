"""One Stripe call budget per process, shared by the writer and the reconciler.

Stripe limits calls per account, not per caller: test mode allows 25 operations a second for
everything, live mode 1,000 meter events a second besides 100 other operations. Every Stripe call a
process makes waits for the budget (``STRIPEMETER_STRIPE_CALLS_PER_SECOND``, spread evenly: a token
bucket from ``stripemeter.domain.rates`` with burst 1, so calls start ``1/rate`` apart, never in a
burst), and a 429 or a connection error from any of them pauses all of them, exponentially with
jitter (0.5 s doubling to 5 s), until a call succeeds again. How to size it for N workers: see
docs/stripe.md.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable

from stripemeter.domain.rates import TokenBucket

MAX_PAUSE_SECONDS = 5.0
FIRST_PAUSE_SECONDS = 0.5


class StripeBudget:
    def __init__(self, calls_per_second: float, monotonic: Callable[[], float] = time.monotonic):
        self.interval = 1.0 / calls_per_second
        self.monotonic = monotonic
        self._calls = TokenBucket(calls_per_second, burst=1)  # one call every `interval`
        self._paused_until = 0.0
        self._pause = FIRST_PAUSE_SECONDS

    @property
    def _next(self) -> float:
        """When the next call may start as far as spacing goes (``-inf`` before the first call)."""
        return self._calls.ready_at()

    async def acquire(self) -> None:
        """Wait for this call's turn (and for a pause after a 429 to end)."""
        while True:
            now = self.monotonic()
            wait = max(self._paused_until - now, self._calls.wait(now))
            if wait <= 0:
                self._calls.take(now)  # the token is there: the next call starts `interval` later
                return
            await asyncio.sleep(wait)

    def slow_down(self, retry_after: float | None = None) -> float:
        """Stripe said 429 (or could not be reached): everyone waits; returns the pause."""
        pause = retry_after if retry_after else self._pause * random.uniform(0.5, 1.0)
        self._paused_until = max(self._paused_until, self.monotonic() + pause)
        self._pause = min(self._pause * 2, MAX_PAUSE_SECONDS)
        return pause

    def recovered(self) -> None:
        self._pause = FIRST_PAUSE_SECONDS

    def paused(self) -> bool:
        return self.monotonic() < self._paused_until


class EventBudget:
    """Meter events a second on Stripe's v2 stream (``STRIPEMETER_STRIPE_STREAM_EVENTS_PER_SECOND``),
    besides the calls budget each stream request takes like any call: a request of ``n`` events waits
    until the events sent in the past second, plus ``n``, fit in ``events_per_second``. So no one-second
    window ever holds more (a request is never split: ``n`` is at most 100)."""

    WINDOW = 1.0

    def __init__(self, events_per_second: float, monotonic: Callable[[], float] = time.monotonic):
        self.events_per_second = events_per_second
        self.monotonic = monotonic
        self._sent: deque[tuple[float, int]] = deque()  # (when, events) of the past second
        self._in_window = 0

    def _forget_before(self, start: float) -> None:
        while self._sent and self._sent[0][0] <= start:
            self._in_window -= self._sent.popleft()[1]

    def wait(self, events: int) -> float:
        """Seconds until ``events`` may be sent (0.0: now); takes nothing."""
        now = self.monotonic()
        self._forget_before(now - self.WINDOW)
        room = self.events_per_second - self._in_window
        if events <= room or not self._sent:
            return 0.0
        freed = 0
        for at, count in self._sent:
            freed += count
            if events <= room + freed:
                return max(at + self.WINDOW - now, 0.0) + 1e-6
        return self.WINDOW

    async def acquire(self, events: int) -> None:
        while (wait := self.wait(events)) > 0:
            await asyncio.sleep(wait)
        self._sent.append((self.monotonic(), events))
        self._in_window += events
