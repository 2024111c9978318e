"""A settable clock for tests: the state asks it for unix seconds instead of calling time.time()."""

from __future__ import annotations


class ManualClock:
    """Callable clock that only moves when told to."""

    def __init__(self, now: float) -> None:
        self.now = float(now)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
