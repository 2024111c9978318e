"""The writer's pure decisions at their boundaries (each test kills a mutant the other tests let live):
a fraction one micro-unit short of a unit, the 5-minute and 35-day limits to the second, the most
uncertain corrections judged, and the exact reason a meter is refused."""

from __future__ import annotations

from dataclasses import replace

from stripemeter.core.push_plan import (
    MAX_AGE_S,
    MAX_AHEAD_S,
    did_it_land,
    meter_problem,
    not_begun,
    targets,
    too_old,
)
from tests.unit.core.test_push_plan import BUCKET, METER, row


def test_a_unit_is_pushed_only_once_its_last_micro_unit_is_counted() -> None:
    assert targets("sum", [999_999]) == [0]
    assert targets("sum", [999_999, 1]) == [0, 1]
    assert targets("sum", [1_999_999, 1, 999_999]) == [1, 1, 0]
    assert targets("sum", [-1]) == [-1]  # towards minus infinity: a negative correction carries too


def test_an_hour_five_minutes_ahead_to_the_second_is_sent() -> None:
    start = BUCKET.timestamp()
    assert not not_begun(row(1), start - MAX_AHEAD_S)
    assert not_begun(row(1), start - MAX_AHEAD_S - 1)


def test_an_hour_exactly_as_old_as_stripe_accepts_is_still_sent() -> None:
    start = BUCKET.timestamp()
    assert not too_old(row(1), start + MAX_AGE_S)
    assert too_old(row(1), start + MAX_AGE_S + 1)


def test_eight_uncertain_corrections_are_still_judged_nine_are_not() -> None:
    assert did_it_land(8, 5, 8, [100] * 8) == "landed"
    assert did_it_land(5, 5, 8, [100] * 8) == "not_landed"
    assert did_it_land(8, 5, 8, [100] * 9) == "unknown"


def test_a_meters_refusal_says_exactly_why() -> None:
    counting = replace(METER, id="mtr_c", formula="count")
    assert meter_problem(counting, "e", "count") == (
        "aggregation",
        "a count metric needs a Stripe meter with formula sum; mtr_c has count (stripemeter sends each change"
        " of a count as a value; Stripe's count formula would count the changes instead)",
    )
    assert meter_problem(counting, "e", "sum") == (
        "aggregation",
        "a sum metric needs a Stripe meter with formula sum; mtr_c has count",
    )
    windowed = replace(METER, id="mtr_w", event_time_window="hour")
    assert meter_problem(windowed, "e", "sum") == (
        "stripeMeterEventName",
        "Stripe meter mtr_w pre-aggregates (event_time_window=hour): it would keep only the newest change"
        " per window; create a meter without it",
    )
