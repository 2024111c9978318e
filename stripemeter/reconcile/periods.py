"""Billing periods (pure): ``YYYY-MM`` names a UTC calendar month, or a customer's own cycle.

A customer mapping may carry a billing-cycle anchor; the cycle named ``YYYY-MM`` is then the one that
starts in that month, on the anchor's day (clamped to the month's last day) and hour. Bounds are
floored to the hour so that every period is a whole number of hour buckets, which is what lets local
totals and Stripe's summaries cover exactly the same range.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_NAME = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


@dataclass(frozen=True)
class Period:
    name: str
    start: datetime  # inclusive, hour-aligned UTC
    end: datetime  # exclusive

    def wire(self) -> dict[str, str]:
        return {"name": self.name, "start": iso(self.start), "end": iso(self.end)}


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_name(name: str) -> tuple[int, int]:
    """``YYYY-MM`` -> (year, month); ValueError otherwise."""
    match = _NAME.match(name)
    if not match:
        raise ValueError(f"period {name!r} is not YYYY-MM")
    return int(match.group(1)), int(match.group(2))


def _next_month(year: int, month: int) -> tuple[int, int]:
    return (year + 1, 1) if month == 12 else (year, month + 1)


def _cycle_start(year: int, month: int, anchor: datetime | None) -> datetime:
    if anchor is None:
        return datetime(year, month, 1, tzinfo=UTC)
    anchor = anchor.astimezone(UTC)
    day = min(anchor.day, calendar.monthrange(year, month)[1])
    return datetime(year, month, day, anchor.hour, tzinfo=UTC)


def period(name: str, anchor: datetime | None = None) -> Period:
    year, month = parse_name(name)
    return Period(name, _cycle_start(year, month, anchor), _cycle_start(*_next_month(year, month), anchor))


def current_name(now: datetime, anchor: datetime | None = None) -> str:
    """The name of the period holding ``now``."""
    now = now.astimezone(UTC)
    year, month = now.year, now.month
    if now < _cycle_start(year, month, anchor):
        year, month = (year - 1, 12) if month == 1 else (year, month - 1)
    return f"{year:04d}-{month:02d}"


def previous_name(name: str) -> str:
    year, month = parse_name(name)
    year, month = (year - 1, 12) if month == 1 else (year, month - 1)
    return f"{year:04d}-{month:02d}"


def open_names(now: datetime, anchors: Iterable[datetime | None], grace: timedelta) -> list[str]:
    """Names of the periods whose invoices can still change at ``now``, newest first: for the calendar
    month and each billing anchor, the current period, and the previous one until ``grace`` after its
    end (Stripe finalises an invoice some time after its period closes)."""
    names: set[str] = set()
    for anchor in {None, *anchors}:
        current = current_name(now, anchor)
        names.add(current)
        previous = previous_name(current)
        if period(previous, anchor).end + grace > now:
            names.add(previous)
    return sorted(names, reverse=True)
