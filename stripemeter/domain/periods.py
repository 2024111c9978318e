"""Billing periods (pure): ``YYYY-MM`` names a UTC calendar month, or a customer's own cycle.

A customer mapping may carry a billing-cycle anchor; the cycle named ``YYYY-MM`` is then the one that
starts in that month, on the anchor's day (clamped to the month's last day), hour and minute, as
Stripe's own cycle does (seconds are dropped: Stripe's summaries take minute boundaries).

Counters are hour buckets, and the writer stamps each hour's meter events with the hour's start. So an
hour belongs to the period that holds its start, in Stripe and here alike: with a 10:45 anchor the
10:00 hour of the anchor day is billed, and reconciled, in the cycle that ends at 10:45.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from stripemeter.domain.errors import Invalid
from stripemeter.domain.timefmt import iso_seconds

_NAME = re.compile(r"(\d{4})-(0[1-9]|1[0-2])")
# Stripe timestamps are unix seconds; the last year leaves room for an anchored cycle's end
MIN_YEAR, MAX_YEAR = 1970, 9998
HOUR = timedelta(hours=1)


class PeriodError(Invalid, ValueError):
    """A period name that is not ``YYYY-MM`` or lies outside the supported years.

    ``name`` is the text refused and the message says what is wrong with it; ``field`` is ``period``
    and ``detail`` the rule every period name must follow (what the API answers)."""

    field: str

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(
            "period",
            f"must be YYYY-MM from {MIN_YEAR}-01 to {MAX_YEAR}-12, e.g. 2026-11",
            message=f"period {name!r} {problem}",
        )
        self.name = name


@dataclass(frozen=True)
class Period:
    name: str
    start: datetime  # inclusive, minute-aligned UTC
    end: datetime  # exclusive

    @property
    def first_hour(self) -> datetime:
        """The first hour bucket of the period: the first hour starting at or after ``start``."""
        return _ceil_hour(self.start)

    @property
    def hours_end(self) -> datetime:
        """The first hour bucket after the period."""
        return _ceil_hour(self.end)

    def holds(self, moment: datetime) -> bool:
        return self.start <= moment < self.end

    def wire(self) -> dict[str, str]:
        return {"name": self.name, "start": iso_seconds(self.start), "end": iso_seconds(self.end)}


def _ceil_hour(moment: datetime) -> datetime:
    floored = moment.replace(minute=0, second=0, microsecond=0)
    return floored if floored == moment else floored + HOUR


def parse_name(name: str) -> tuple[int, int]:
    """``YYYY-MM`` -> (year, month); PeriodError otherwise."""
    match = _NAME.fullmatch(name)
    if not match:
        raise PeriodError(name, "is not YYYY-MM")
    year, month = int(match.group(1)), int(match.group(2))
    if not MIN_YEAR <= year <= MAX_YEAR:
        raise PeriodError(name, f"is outside {MIN_YEAR}-01 .. {MAX_YEAR}-12")
    return year, month


def _next_month(year: int, month: int) -> tuple[int, int]:
    return (year + 1, 1) if month == 12 else (year, month + 1)


def _previous_month(year: int, month: int) -> tuple[int, int]:
    return (year - 1, 12) if month == 1 else (year, month - 1)


def _cycle_start(year: int, month: int, anchor: datetime | None) -> datetime:
    if anchor is None:
        return datetime(year, month, 1, tzinfo=UTC)
    anchor = anchor.astimezone(UTC)
    day = min(anchor.day, calendar.monthrange(year, month)[1])
    return datetime(year, month, day, anchor.hour, anchor.minute, tzinfo=UTC)


def period(name: str, anchor: datetime | None = None) -> Period:
    return _period(*parse_name(name), anchor)


def _period(year: int, month: int, anchor: datetime | None) -> Period:
    name = f"{year:04d}-{month:02d}"
    return Period(name, _cycle_start(year, month, anchor), _cycle_start(*_next_month(year, month), anchor))


def current_name(now: datetime, anchor: datetime | None = None) -> str:
    """The name of the period holding ``now``."""
    now = now.astimezone(UTC)
    year, month = now.year, now.month
    if now < _cycle_start(year, month, anchor):
        year, month = _previous_month(year, month)
    return f"{year:04d}-{month:02d}"


def holding(moment: datetime, anchor: datetime | None = None) -> Period:
    """The period holding ``moment`` (for an hour bucket: its start); any year an event can have,
    not only those a period name may give."""
    year, month = (int(part) for part in current_name(moment, anchor).split("-"))
    return _period(year, month, anchor)


def previous_name(name: str) -> str:
    return "{:04d}-{:02d}".format(*_previous_month(*parse_name(name)))


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


def open_since(now: datetime, anchors: Iterable[datetime | None], grace: timedelta) -> datetime:
    """The start of the oldest period (``open_names``) whose invoice can still change at ``now``."""
    anchors = {None, *anchors}
    return min(period(name, anchor).start for anchor in anchors for name in open_names(now, [anchor], grace))


# --- what a correction's period means for billing -------------------------------------------------

PeriodState = Literal["open", "closing", "closed"]
# Stripe takes meter events up to 35 days old: an older hour cannot be changed there at all
STRIPE_MAX_AGE = timedelta(days=35)


def state_at(p: Period, now: datetime, grace: timedelta) -> PeriodState:
    """``open`` until the period ends, ``closing`` while its invoice can still change (``grace``
    after the end), ``closed`` after: the invoice is likely final."""
    if now < p.end:
        return "open"
    return "closing" if now < p.end + grace else "closed"


@dataclass
class PeriodNote:
    """One period a correction changes: how many counters, by how much, and what that means now."""

    period: Period
    state: PeriodState
    counters: int = 0
    delta_micros: int = 0
    too_old_for_stripe: int = 0  # counters of hours older than Stripe accepts

    def warning(self, grace: timedelta) -> str | None:
        name, end = self.period.name, iso_seconds(self.period.end)
        if self.too_old_for_stripe:
            return (
                f"period {name}: {self.too_old_for_stripe} changed hour(s) are older than Stripe's 35 days;"
                " the writer cannot push them (settle them outside Stripe)"
            )
        if self.state == "closed":
            return (
                f"period {name} closed at {end}: its invoice is likely final, so Stripe will not bill this"
                " change (settle it with a credit note or an invoice item)"
            )
        if self.state == "closing":
            finalised = iso_seconds(self.period.end + grace)
            return (
                f"period {name} ended at {end}: its invoice is being finalised (at the latest by"
                f" {finalised}); the change counts only if it reaches Stripe before then"
            )
        return None


def notes_for(
    changes: Iterable[tuple[datetime | None, datetime, int]], now: datetime, grace: timedelta
) -> tuple[list[str], list[PeriodNote]]:
    """For changes ``(billing anchor, hour bucket, delta micros)``: the period name of each, in order,
    and one note per period, oldest first."""
    names: list[str] = []
    notes: dict[tuple[str, datetime], PeriodNote] = {}
    for anchor, bucket, delta in changes:
        p = holding(bucket, anchor)
        note = notes.get((p.name, p.start))
        if note is None:
            note = notes[p.name, p.start] = PeriodNote(p, state_at(p, now, grace))
        note.counters += 1
        note.delta_micros += delta
        note.too_old_for_stripe += bucket < now - STRIPE_MAX_AGE
        names.append(p.name)
    return names, [notes[k] for k in sorted(notes, key=lambda k: (k[1], k[0]))]
