"""The instants every time-sensitive suite runs at, besides now: where calendars bite.

A test takes ``at`` (None: now) and lives there through ``clock_offset(at)``: the worker, the API, the
Stripe emulator and the CLI it starts get the same STRIPEMETER_CLOCK_OFFSET_SECONDS (see
stripemeter/domain/clock.py), while Kafka and PostgreSQL stay on real time.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from stripemeter.domain.clock import Clock

FIXED = {
    # the story starts in November's last minute and ends in December
    "last-minute-of-a-month": datetime(2026, 11, 30, 23, 59, tzinfo=UTC),
    # the first hour of a month and of a year: late usage and the hours before belong to last year
    "first-hour-of-a-year": datetime(2027, 1, 1, 0, 20, tzinfo=UTC),
    # the first hour after a leap day: the previous month has 29 days
    "after-a-leap-day": datetime(2028, 3, 1, 1, 10, tzinfo=UTC),
}


def instants(*names: str) -> list[object]:
    """``now`` and the named fixed instants (all of them by default), as pytest parameters."""
    chosen = names or tuple(FIXED)
    return [pytest.param(None, id="now"), *(pytest.param(FIXED[n], id=n) for n in chosen)]


def clock_offset(at: datetime | None) -> float:
    return 0.0 if at is None else Clock.starting_at(at).offset_seconds
