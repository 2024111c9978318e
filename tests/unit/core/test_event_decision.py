"""The meter's per-event decision as a table: each outcome, the lateness limit exactly, the horizon,
the overflow limit, and lateness windows across month and year boundaries."""

from __future__ import annotations

from typing import Any

import pytest

from stripemeter.core.counting import Partial, counter_key
from stripemeter.core.event_decision import (
    ALREADY_HANDLED,
    COUNTED,
    COUNTED_AGAIN,
    DUPLICATE,
    LATE,
    OVERFLOW,
    decide,
    late_against,
)
from stripemeter.core.memory_state import MemoryState
from stripemeter.core.metering import Metering
from stripemeter.domain.policy import MetricPolicy, Policies
from stripemeter.domain.timefmt import parse_iso_ms
from stripemeter.domain.units import MICROS
from stripemeter.schemas.events import MAX_MICROS, UsageEvent
from stripemeter.schemas.records import encode_batch, keyed_item
from stripemeter.schemas.versions import load_value

HOUR = 3_600_000
DAY = 24 * HOUR
T0 = parse_iso_ms("2026-11-18T08:00:00Z")
OFFSET = 17  # the keyed message being handled
POLICY = MetricPolicy(lateness_ms=2 * HOUR)


def item(ts_ms: int = T0, micros: int = MICROS, source: tuple[int, int, int] = (3, 41, 2)) -> list[Any]:
    return keyed_item(UsageEvent("t", "m", "c", micros, ts_ms, "k", False, None, None), *source)


def entry(source: tuple[int, int, int] = (3, 41, 2), keyed_offset: int = OFFSET) -> list[Any]:
    """A dedupe entry as decoded (the stored array)."""
    return [*source, keyed_offset, T0, "m", "c"]


def decision(
    event: list[Any],
    seen: list[Any] | None = None,
    watermark: int | None = None,
    policy: MetricPolicy = POLICY,
    counter: list[int | None] | None = None,
    pending: Partial | None = None,
) -> str:
    return decide(event, seen, OFFSET, watermark, policy, counter, pending)


@pytest.mark.parametrize(
    ("seen", "outcome"),
    [
        (None, COUNTED),
        (entry((3, 41, 2), OFFSET), COUNTED_AGAIN),  # this very keyed message again after a crash
        (entry((3, 41, 2), OFFSET - 5), ALREADY_HANDLED),  # intake re-sent the input in another message
        (entry((4, 41, 2)), DUPLICATE),  # another input: other partition, offset or index
        (entry((3, 40, 2)), DUPLICATE),
        (entry((3, 41, 1)), DUPLICATE),
    ],
)
def test_the_dedupe_entry_decides_first(seen: list[Any] | None, outcome: str) -> None:
    assert decision(item(), seen, watermark=T0) == outcome


def test_an_event_with_an_entry_is_never_too_late_or_overflowing() -> None:
    """A redelivered message is counted again even when the watermark has moved far past it since:
    the counter's applied offset keeps it from adding twice, and the ledger row must reappear."""
    far = T0 + 100 * DAY
    full: list[int | None] = [MAX_MICROS, 1, 0, T0]
    assert decision(item(), entry(), watermark=far, counter=full) == COUNTED_AGAIN
    assert decision(item(), entry((9, 9, 9)), watermark=far, counter=full) == DUPLICATE


def test_the_lateness_limit_is_inclusive() -> None:
    watermark = T0 + 10 * HOUR
    limit = watermark - POLICY.lateness_ms
    assert decision(item(limit), watermark=watermark) == COUNTED
    assert decision(item(limit - 1), watermark=watermark) == LATE
    assert decision(item(limit - 1), watermark=None) == COUNTED  # a stream's first event
    assert late_against(watermark, POLICY) == watermark


def test_the_horizon_is_inclusive_and_names_the_watermark_failed_against() -> None:
    policy = MetricPolicy(lateness_ms=2 * HOUR, horizon_ms=T0)
    assert decision(item(T0), policy=policy) == COUNTED
    assert decision(item(T0 - 1), policy=policy) == LATE
    assert late_against(None, policy) == T0 + 2 * HOUR  # no watermark yet: the horizon's
    assert late_against(T0 + 5 * HOUR, policy) == T0 + 5 * HOUR


@pytest.mark.parametrize(
    ("watermark", "lateness_days", "at_limit"),
    [
        ("2027-01-01T00:00:00.000Z", 1, "2026-12-31T00:00:00.000Z"),  # across the year
        ("2026-03-01T00:30:00.000Z", 1, "2026-02-28T00:30:00.000Z"),  # a February of 28 days
        ("2028-03-01T00:00:00.000Z", 35, "2028-01-26T00:00:00.000Z"),  # 29 days of February, 2 months
        ("2026-12-01T00:00:00.000Z", 30, "2026-11-01T00:00:00.000Z"),  # November's 30 days
    ],
)
def test_lateness_windows_across_month_and_year_boundaries(
    watermark: str, lateness_days: int, at_limit: str
) -> None:
    policy = MetricPolicy(lateness_ms=lateness_days * DAY)
    mark, limit = parse_iso_ms(watermark), parse_iso_ms(at_limit)
    assert decision(item(limit), watermark=mark, policy=policy) == COUNTED
    assert decision(item(limit - 1), watermark=mark, policy=policy) == LATE


def test_an_event_that_would_take_its_counter_beyond_64_bits_overflows() -> None:
    room = MAX_MICROS - 5 * MICROS
    assert decision(item(micros=5 * MICROS), counter=[room, 1, 0, T0]) == COUNTED
    assert decision(item(micros=5 * MICROS + 1), counter=[room, 1, 0, T0]) == OVERFLOW
    pending = Partial("sum")
    pending.add(MICROS, T0)  # what the message added before this event
    assert decision(item(micros=4 * MICROS), counter=[room, 1, 0, T0], pending=pending) == COUNTED
    assert decision(item(micros=4 * MICROS + 1), counter=[room, 1, 0, T0], pending=pending) == OVERFLOW


def test_count_and_last_aggregations_overflow_by_their_own_measure() -> None:
    full = MAX_MICROS - MICROS
    count, last = MetricPolicy("count", 2 * HOUR), MetricPolicy("last", 2 * HOUR)
    big = item(micros=MAX_MICROS)
    assert decision(big, policy=count, counter=[full, 1, 0, T0]) == COUNTED  # one event adds one unit
    assert decision(item(micros=1), policy=count, counter=[full + 1, 1, 0, T0]) == OVERFLOW
    assert decision(big, policy=last, counter=[MAX_MICROS, 1, 0, T0]) == COUNTED  # replaces, never adds
    assert decision(big, counter=None) == COUNTED


def test_events_either_side_of_new_year_count_into_their_own_hours() -> None:
    """Through the meter, with its clock fixed at the new year: the last millisecond of the year and
    the first one of the next land in two counters, the year's last hour and the next one's first."""
    new_year = parse_iso_ms("2027-01-01T00:00:00.000Z")
    counters = MemoryState()
    meter = Metering(MemoryState(), counters, MemoryState(), Policies(POLICY, {}))
    events = [
        keyed_item(UsageEvent("t", "m", "c", 2 * MICROS, new_year - 1, "a", False, None, None), 0, 1, 0),
        keyed_item(UsageEvent("t", "m", "c", 3 * MICROS, new_year, "b", False, None, None), 0, 2, 0),
    ]
    assert meter.handle(0, 0, encode_batch(events), now_ms=new_year)

    def total(bucket: str) -> int:
        raw = counters.get(0, counter_key("t", "m", "c", parse_iso_ms(bucket)).encode())
        return int(load_value(raw)[0]) if raw is not None else 0

    assert total("2026-12-31T23:00:00Z") == 2 * MICROS
    assert total("2027-01-01T00:00:00Z") == 3 * MICROS
    assert [row[0] for row in meter.outcomes.ledger] == ["counted", "counted"]
