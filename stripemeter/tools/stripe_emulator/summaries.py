"""Meter event summaries: `GET /v1/billing/meters/{id}/event_summaries`, as a pure fold.

`start_time` (inclusive) and `end_time` (exclusive) must sit on minute boundaries, and on hour or UTC-day
boundaries when `value_grouping_window` is `hour` or `day`. Without a window the whole range is one
summary. The emulator returns a summary only for windows holding at least one counted event (so an
empty range gives an empty list), newest window first. `last` is the value of the event with the
newest timestamp. A meter with an `event_time_window` (`hour` or `day`) takes pre-aggregated events: of
each customer's events in one such window (by timestamp, UTC aligned) only the newest counts.

Ties: Stripe does not say which of two events with the same timestamp is the newest. The emulator
takes the one received first, so a sender that relies on receipt order (the later one winning, as it
may well at Stripe) fails here rather than in a customer's invoice: the newest value needs a later
timestamp.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from stripemeter.tools.stripe_emulator.meter_events import MeterEvent
from stripemeter.tools.stripe_emulator.stripe_errors import invalid, parse_int, reject_unknown, required

WINDOW_SECONDS = {"hour": 3600, "day": 86400}
QUERY_PARAMS = {
    "customer",
    "start_time",
    "end_time",
    "value_grouping_window",
    "limit",
    "starting_after",
    "ending_before",
}


@dataclass(frozen=True)
class SummaryQuery:
    customer: str
    start_time: int
    end_time: int
    window: str | None


def _aligned(name: str, value: int, seconds: int, unit: str) -> int:
    if value % seconds:
        raise invalid(f"Invalid {name}: {value} must be aligned to the {unit}.", param=name)
    return value


def parse_query(params: dict[str, Any]) -> SummaryQuery:
    reject_unknown(params, QUERY_PARAMS)
    customer = required(params, "customer")
    start = parse_int(required(params, "start_time"), "start_time")
    end = parse_int(required(params, "end_time"), "end_time")
    window = params.get("value_grouping_window")  # an empty one is refused, as the spec's enum does
    if window is not None and window not in WINDOW_SECONDS:
        raise invalid("Invalid value_grouping_window: must be one of hour, day", "value_grouping_window")
    seconds, unit = (WINDOW_SECONDS[window], "UTC " + window) if window else (60, "minute")
    _aligned("start_time", start, seconds, unit)
    _aligned("end_time", end, seconds, unit)
    if end <= start:
        raise invalid("Invalid end_time: must be after start_time.", param="end_time")
    return SummaryQuery(customer, start, end, window)


def summary_id(meter_id: str, query: SummaryQuery, start: int, end: int) -> str:
    """Stable across calls, so `starting_after` cursors keep working."""
    digest = hashlib.sha256(f"{meter_id}|{query.customer}|{start}|{end}".encode()).hexdigest()
    return "mtrusg_" + digest[:24]


def aggregate(formula: str, events: list[MeterEvent]) -> float:
    if formula == "count":
        return float(len(events))
    if formula == "last":
        # the newest timestamp; of equal ones the earliest received (max keeps the first maximum)
        return float(max(events, key=lambda e: e.timestamp).value)
    return float(sum(e.value for e in events))


def newest_per_window(events: Iterable[MeterEvent], window: str) -> list[MeterEvent]:
    """Of events in receipt order, the newest per (customer, event time window); receipt order kept."""
    size = WINDOW_SECONDS[window]
    newest: dict[tuple[str, int], tuple[int, MeterEvent]] = {}
    for position, event in enumerate(events):
        key = (event.customer, event.timestamp - event.timestamp % size)
        kept = newest.get(key)
        if kept is None or event.timestamp > kept[1].timestamp:  # a tie keeps the earlier received
            newest[key] = (position, event)
    return [event for _, event in sorted(newest.values(), key=lambda kept: kept[0])]


def summarize(
    meter: dict[str, Any], events: Iterable[MeterEvent], query: SummaryQuery
) -> list[dict[str, Any]]:
    """Summaries of `events` (already filtered to counted ones, in receipt order), newest window first."""
    if meter.get("event_time_window"):
        events = newest_per_window(events, meter["event_time_window"])
    size = WINDOW_SECONDS[query.window] if query.window else None
    buckets: dict[int, list[MeterEvent]] = {}
    for event in events:
        if event.customer != query.customer or not query.start_time <= event.timestamp < query.end_time:
            continue
        start = event.timestamp - event.timestamp % size if size else query.start_time
        buckets.setdefault(start, []).append(event)
    summaries = []
    for start in sorted(buckets, reverse=True):
        end = start + size if size else query.end_time
        summaries.append(
            {
                "id": summary_id(meter["id"], query, start, end),
                "object": "billing.meter_event_summary",
                "aggregated_value": aggregate(meter["default_aggregation"]["formula"], buckets[start]),
                "end_time": end,
                "livemode": False,
                "meter": meter["id"],
                "start_time": start,
            }
        )
    return summaries


def period_total(meter: dict[str, Any], events: Iterable[MeterEvent], start: int, end: int) -> int:
    """The meter's aggregate of `events` (counted ones, in receipt order) stamped in [start, end): what
    an invoice bills for the period; 0 without events."""
    if meter.get("event_time_window"):
        events = newest_per_window(events, meter["event_time_window"])
    inside = [e for e in events if start <= e.timestamp < end]
    return int(aggregate(meter["default_aggregation"]["formula"], inside)) if inside else 0
