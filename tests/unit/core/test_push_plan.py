"""Deciding pushes: whole-unit targets that carry fractions, the recorded request, meter checks."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from stripemeter.core.push_plan import (
    Request,
    Row,
    StripeMeterSpec,
    idempotency_key,
    identifier,
    identifier_of_key,
    meter_problem,
    new_request,
    not_begun,
    targets,
    too_old,
)

BUCKET = datetime(2026, 11, 20, 14, tzinfo=UTC)
METER = StripeMeterSpec("mtr_1", "api_requests", "sum", "customer", "units", True, None)


def row(latest_micros: int, pushed: int = 0, version: int = 3) -> Row:
    return Row(
        ("t", "requests", "acme", BUCKET), latest_micros, pushed, "waiting", version, 0, None, None, 0, 0
    )


def test_a_failed_hour_waits_its_backoff_even_in_a_stream_picked_for_another_hour() -> None:
    failed = replace(row(5_000_000), attempts=3, updated_at=1_000.0)  # waits 1 s (2 s * 0.5, jitter's edge)
    assert failed.retry_wait(1_000.5)
    assert not failed.retry_wait(1_001.0)
    many = replace(row(5_000_000), attempts=40, updated_at=1_000.0)  # at most 30 s (15 s at the edge)
    assert many.retry_wait(1_014.9) and not many.retry_wait(1_015.0)
    assert not row(5_000_000).retry_wait(0.0)  # never failed: never waits


def test_fractions_carry_from_hour_to_hour_and_nothing_is_lost() -> None:
    # 0.9 units in every hour of a 30-day month: 648 units, not 0
    assert sum(targets("sum", [900_000] * 720)) == 648
    assert targets("sum", [900_000, 900_000, 900_000]) == [0, 1, 1]
    assert targets("sum", [2_500_000, 2_500_000]) == [2, 3]
    # whole-number usage: each hour holds its own units, whatever came before
    assert targets("sum", [3_000_000, 5_000_000, 1_000_000]) == [3, 5, 1]
    # a negative correction carries too (floor of a negative total)
    assert targets("sum", [1_500_000, -2_000_000, 600_000]) == [1, -2, 1]
    assert targets("count", [2_000_000, 1_000_000]) == [2, 1]


def test_last_holds_each_hours_value_rounded_half_up() -> None:
    assert targets("last", [2_400_000, 2_500_000, 7_000_000]) == [2, 3, 7]


def test_the_request_is_the_difference_with_the_meters_own_keys_stamped_at_the_hours_start() -> None:
    request = new_request(row(7_500_000, pushed=3), 7, "sum", METER, "cus_1")
    assert request.payload == {"customer": "cus_1", "units": "4"}
    assert (request.timestamp, request.value, request.to_units) == (int(BUCKET.timestamp()), 4, 7)
    assert request.identifier == identifier(row(0).key, 4) and len(request.identifier) <= 100
    assert request.params() == {
        "event_name": "api_requests",
        "payload": {"customer": "cus_1", "units": "4"},
        "identifier": request.identifier,
        "timestamp": int(BUCKET.timestamp()),
    }
    last = new_request(row(2_000_000, pushed=5), 2, "last", METER, "cus_1")
    assert last.payload["units"] == "2"


def test_a_recorded_request_is_sent_again_unchanged() -> None:
    request = new_request(row(7_000_000), 7, "sum", METER, "cus_1")
    assert Request.from_wire(request.wire()) == request
    # recorded before requests were (migration 0010): identifier and target only
    assert Request.from_wire({"identifier": "sm_x", "toUnits": 3, "recorded": False}) is None


def test_identifiers_differ_per_version_and_keys_per_attempt() -> None:
    assert identifier(row(0).key, 4) != identifier(row(0).key, 5)
    request = new_request(row(1_000_000), 1, "sum", METER, "cus_1")
    assert idempotency_key(request, 0) == request.identifier
    assert idempotency_key(request, 2) == request.identifier + "-r2"
    assert identifier_of_key(idempotency_key(request, 2)) == request.identifier
    assert identifier_of_key(request.identifier) == request.identifier


def test_hours_stripe_would_refuse_wait_or_park() -> None:
    start = BUCKET.timestamp()
    assert not_begun(row(1), start - 3000)  # an event up to an hour ahead; Stripe takes 5 minutes
    assert not not_begun(row(1), start - 200)
    assert too_old(row(1), start + 35 * 86400)
    assert not too_old(row(1), start + 34 * 86400)


@pytest.mark.parametrize(
    ("meter", "aggregation", "field"),
    [
        (None, "sum", "stripeMeterEventName"),
        (StripeMeterSpec("m", "e", "sum", "c", "v", False, None), "sum", "stripeMeterEventName"),
        (StripeMeterSpec("m", "e", "sum", "c", "v", True, "hour"), "sum", "stripeMeterEventName"),
        (StripeMeterSpec("m", "e", "count", "c", "v", True, None), "count", "aggregation"),
        (StripeMeterSpec("m", "e", "count", "c", "v", True, None), "sum", "aggregation"),
        (StripeMeterSpec("m", "e", "sum", "c", "v", True, None), "last", "aggregation"),
        (StripeMeterSpec("m", "e", "sum", "c", "v", True, None), "sum", None),
        (StripeMeterSpec("m", "e", "sum", "c", "v", True, None), "count", None),  # counts travel as values
        (StripeMeterSpec("m", "e", "last", "c", "v", True, None), "last", None),
    ],
)
def test_a_meter_must_carry_the_metrics_aggregation(
    meter: StripeMeterSpec | None, aggregation: str, field: str | None
) -> None:
    problem = meter_problem(meter, "e", aggregation)
    assert (problem[0] if problem else None) == field


def test_a_pending_request_older_than_a_day_is_judged_by_what_stripes_hour_holds() -> None:
    from stripemeter.core.push_plan import did_it_land

    assert did_it_land(8, 5, 8, []) == "landed"
    assert did_it_land(5, 5, 8, []) == "not_landed"
    assert did_it_land(7, 5, 8, []) == "unknown"
    # a correction of +2 whose answer was lost may be in the hour or not
    assert did_it_land(10, 5, 8, [2]) == "landed"
    assert did_it_land(7, 5, 8, [2]) == "not_landed"
    assert did_it_land(8, 5, 8, [3]) == "unknown"  # landed, or not landed plus the correction
    assert did_it_land(8, 5, 8, [1] * 9) == "unknown"


# --- last is Stripe's last --------------------------------------------------------------------------------


def test_a_last_hour_stripe_holds_nothing_for_has_not_reached_0() -> None:
    from stripemeter.core.push_plan import reached

    empty = row(0)  # seats 0 from the hour's first event: Stripe holds no event of the hour yet
    assert not reached(empty, 0, "last")
    assert reached(replace(empty, holds=True), 0, "last")  # a 0 was delivered
    assert reached(row(0, pushed=3), 3, "last")
    assert reached(empty, 0, "sum") and reached(empty, 0, "count")  # a sum of nothing is 0


def test_each_last_request_of_an_hour_is_stamped_after_the_previous_one() -> None:
    from stripemeter.core.push_plan import MAX_AHEAD_S, next_timestamp

    start = int(BUCKET.timestamp())
    end, later = start + 3600, start + 7200.0
    assert next_timestamp(row(1), "last", end, later) == start  # the first: the hour's start
    stamps, hour = [], row(1)
    for _ in range(5):  # five changes in one second of the clock: five distinct, growing stamps
        stamp = next_timestamp(hour, "last", end, later)
        assert isinstance(stamp, int)
        stamps.append(stamp)
        hour = replace(hour, last_timestamp=stamp)
    assert stamps == [start, start + 1, start + 2, start + 3, start + 4]
    # a sum or count request keeps the hour's start, whatever came before
    assert next_timestamp(replace(hour, last_timestamp=start + 9), "sum", end, later) == start
    # never past the hour's end (or its period's end, when that comes first) ...
    assert next_timestamp(replace(hour, last_timestamp=end - 2), "last", end, later) == end - 1
    assert next_timestamp(replace(hour, last_timestamp=end - 1), "last", end, later) == "exhausted"
    assert next_timestamp(replace(hour, last_timestamp=start + 1019), "last", start + 1020, later) == (
        "exhausted"
    )
    # ... and never further ahead of the clock than Stripe takes: the request waits
    now = start + 100.0
    ahead = replace(hour, last_timestamp=int(now) + MAX_AHEAD_S - 1)
    assert next_timestamp(ahead, "last", end, now) == int(now) + MAX_AHEAD_S
    assert next_timestamp(replace(ahead, last_timestamp=int(now) + MAX_AHEAD_S), "last", end, now) == "wait"
    assert next_timestamp(hour, "last", end, now) == start + 5


def test_a_last_request_carries_its_stamp_and_is_resent_with_it() -> None:
    stamp = int(BUCKET.timestamp()) + 7
    request = new_request(row(0), 0, "last", METER, "cus_1", stamp)
    assert (request.timestamp, request.value, request.payload["units"]) == (stamp, 0, "0")
    assert Request.from_wire(request.wire()) == request


def test_an_old_last_request_is_judged_by_the_hours_newest_event() -> None:
    from stripemeter.core.push_plan import did_last_land

    assert did_last_land(None, None, 0) == "not_landed"  # no event at all: the 0 never landed
    assert did_last_land(0, None, 0) == "landed"  # an event of 0: it did
    assert did_last_land(7, 7, 0) == "not_landed"
    assert did_last_land(0, 7, 0) == "landed"
    assert did_last_land(3, 7, 0) == "unknown"
    assert did_last_land(None, 7, 0) == "unknown"  # Stripe lost what it held


# --- only permanent refusals park -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "meter_fits", "customer_exists", "temporary"),
    [
        ("timestamp_in_future", False, False, True),  # our clock runs ahead of Stripe's
        ("lock_timeout", False, False, True),
        ("timestamp_too_far_in_past", True, True, False),
        ("meter_event_invalid_value", True, True, False),
        ("meter_event_value_too_many_digits", True, True, False),
        ("meter_event_no_customer_defined", True, True, False),
        ("parameter_unknown", True, True, False),
        (None, True, True, False),
        ("no_meter", True, False, True),  # the meter Stripe lists now fits: created a moment ago
        ("no_meter", False, True, False),  # it does not, read afresh: parked
        ("archived_meter", True, False, True),
        ("archived_meter", False, True, False),
        ("meter_event_customer_not_found", False, True, True),  # Stripe has it when asked: a new one
        ("meter_event_customer_not_found", True, False, False),  # it has not: a wrong customer id
        ("resource_missing", False, True, True),
        ("resource_missing", True, False, False),
    ],
)
def test_a_refusal_is_temporary_only_when_the_same_request_can_pass_later(
    code: str | None, meter_fits: bool, customer_exists: bool, temporary: bool
) -> None:
    from stripemeter.core.push_plan import refusal_is_temporary

    assert refusal_is_temporary(code, meter_fits, customer_exists) is temporary


def test_a_request_names_its_customer() -> None:
    assert new_request(row(7_000_000), 7, "sum", METER, "cus_1").customer == "cus_1"
    assert new_request(row(0), 0, "last", METER, "cus_0").customer == "cus_0"


def test_temporary_refusals_end_after_an_hour() -> None:
    from stripemeter.core.push_plan import TEMPORARY_REFUSAL_LIMIT_S, refused_too_long

    assert not refused_too_long(row(1), 1e9)
    refused = replace(row(1), refused_since=1000.0)
    assert not refused_too_long(refused, 1000.0 + TEMPORARY_REFUSAL_LIMIT_S - 1)
    assert refused_too_long(refused, 1000.0 + TEMPORARY_REFUSAL_LIMIT_S)
