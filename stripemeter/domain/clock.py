"""The one clock every stripemeter process reads: real time, shifted by a fixed offset.

The offset is a setting (``STRIPEMETER_CLOCK_OFFSET_SECONDS``), so a worker, the API, the Stripe
emulator and the CLI started with the same value agree on "now" to the millisecond, whenever each
started. It is zero in production; tests and ``stripemeter demo --at`` use it to live at a chosen
instant (the first hour of a month, New Year, a leap day). Kafka and PostgreSQL keep real time:
nothing compares their clocks with this one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True)
class Clock:
    offset_seconds: float = 0.0

    def __call__(self) -> float:
        """Unix seconds."""
        return time.time() + self.offset_seconds

    def ms(self) -> int:
        return int(self() * 1000)

    def utc(self) -> datetime:
        return datetime.fromtimestamp(self(), tz=UTC)

    @staticmethod
    def starting_at(instant: datetime) -> Clock:
        """A clock that reads ``instant`` now and runs on from there."""
        return Clock(instant.timestamp() - time.time())


SYSTEM = Clock()
