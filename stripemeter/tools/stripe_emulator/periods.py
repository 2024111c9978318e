"""Billing periods as Stripe counts them: whole price intervals from the billing cycle anchor, in UTC.

The n-th boundary is the anchor moved n intervals forward, always from the anchor itself (never from
the previous boundary): a monthly anchor on 31 January 10:45:00 gives 28 (or 29) February 10:45:00,
then 31 March 10:45:00, 30 April 10:45:00; a yearly anchor on 29 February gives 28 February in the
years between leap years. Days and weeks are 86,400 and 604,800 seconds. A subscription's first
period runs from its start to the first boundary after it (the anchor itself when the anchor is
later than the start), then from boundary to boundary.
"""

from __future__ import annotations

import calendar
from datetime import UTC, datetime

INTERVALS = ("day", "week", "month", "year")
SECONDS = {"day": 86_400, "week": 7 * 86_400}
# Stripe's longest billing interval is three years
MAX_INTERVAL_COUNT = {"day": 1095, "week": 156, "month": 36, "year": 3}


def boundary(anchor: int, interval: str, count: int, n: int) -> int:
    """The anchor moved `n` times `count` intervals forward (n may be 0)."""
    if interval in SECONDS:
        return anchor + n * count * SECONDS[interval]
    start = datetime.fromtimestamp(anchor, UTC)
    months = start.month - 1 + n * count * (12 if interval == "year" else 1)
    year, month = start.year + months // 12, months % 12 + 1
    day = min(start.day, calendar.monthrange(year, month)[1])
    return int(start.replace(year=year, month=month, day=day).timestamp())


def first_after(anchor: int, interval: str, count: int, after: int) -> int:
    """The index of the first boundary strictly after `after` (0 when the anchor is after it)."""
    n = 0
    while boundary(anchor, interval, count, n) <= after:
        n += 1
    return n
