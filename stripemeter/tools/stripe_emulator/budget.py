"""One operations-per-second budget for the whole account, as Stripe limits test mode.

A token bucket holding at most one second of operations: `rate` requests may arrive at once, then one
more every 1/rate seconds. It runs on a monotonic clock of its own (real time by default, whatever
the emulated clock says: the limit is about how fast requests arrive). Tests may replace `clock`.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class OpsBudget:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._tokens: float | None = None  # full until first used
        self._updated = 0.0

    def take(self, rate: float) -> bool:
        """Spend one operation; False when the budget of `rate` per second is used up (0: unlimited)."""
        if rate <= 0:
            return True
        now = self.clock()
        if self._tokens is None:
            self._tokens = float(rate)
        else:
            self._tokens = min(float(rate), self._tokens + (now - self._updated) * rate)
        self._updated = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
