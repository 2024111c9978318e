"""One operations-per-second budget for the whole account, as Stripe limits test mode.

A token bucket (``stripemeter.domain.rates.TokenBucket``) holding at most one second of operations:
`rate` requests may arrive at once, then one more every 1/rate seconds. So it is not a per-second
window: a full second's worth may arrive at once only after the bucket has refilled, and requests
spread evenly are never refused. `rate` is the `ops_per_second` fault, read on every request: it
may change while the emulator runs (the time since the last request then refills at the new rate,
up to the new size), and 0 turns the budget off without touching it. It runs on a monotonic clock
of its own (real time by default, whatever the emulated clock says: the limit is about how fast
requests arrive). Tests may replace `clock`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from stripemeter.domain.rates import TokenBucket


class OpsBudget:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._bucket = TokenBucket(rate=0.0, burst=0.0)  # sized on each take; full until first used

    def take(self, rate: float) -> bool:
        """Spend one operation; False when the budget of `rate` per second is used up (0: unlimited)."""
        if rate <= 0:
            return True
        self._bucket.rate = self._bucket.burst = float(rate)  # one second's worth at most
        return self._bucket.take(self.clock()) == 0.0
