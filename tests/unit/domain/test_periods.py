"""Billing periods at the instants where calendars bite: the first and last hour of a month, New Year,
leap days, anchors on the 31st."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from stripemeter.domain import periods

GRACE = timedelta(hours=72)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        # the first days of a month: last month's invoice can still change, so it is reconciled too
        (datetime(2026, 12, 1, 0, 30, tzinfo=UTC), ["2026-12", "2026-11"]),
        (datetime(2026, 12, 2, 0, 45, tzinfo=UTC), ["2026-12", "2026-11"]),
        (datetime(2026, 12, 3, 23, 59, tzinfo=UTC), ["2026-12", "2026-11"]),
        (datetime(2026, 12, 4, 0, 0, tzinfo=UTC), ["2026-12"]),
        (datetime(2026, 12, 31, 23, 30, tzinfo=UTC), ["2026-12"]),
        (datetime(2027, 1, 1, 1, 30, tzinfo=UTC), ["2027-01", "2026-12"]),
        (datetime(2028, 3, 1, 0, 0, tzinfo=UTC), ["2028-03", "2028-02"]),
    ],
)
def test_open_periods_are_the_current_one_and_the_previous_one_until_its_invoice_is_final(
    now: datetime, expected: list[str]
) -> None:
    assert periods.open_names(now, [], GRACE) == expected


def test_open_periods_follow_every_billing_anchor() -> None:
    anchor = datetime(2026, 1, 15, 10, tzinfo=UTC)  # cycles from the 15th, 10:00
    now = datetime(2026, 12, 2, 0, 45, tzinfo=UTC)
    # calendar: 2026-12 and 2026-11 (closed 25 h ago); anchored: the cycle named 2026-11 runs
    # 15 Nov - 15 Dec, and 2026-10 closed on 15 Nov, long ago
    assert periods.open_names(now, [anchor], GRACE) == ["2026-12", "2026-11"]
    assert periods.open_names(datetime(2026, 12, 16, tzinfo=UTC), [anchor], GRACE) == ["2026-12", "2026-11"]
    assert periods.open_names(datetime(2026, 12, 19, tzinfo=UTC), [anchor], GRACE) == ["2026-12"]


def test_previous_name_crosses_the_year() -> None:
    assert periods.previous_name("2027-01") == "2026-12"
    assert periods.previous_name("2028-03") == "2028-02"


def test_periods_are_calendar_months_or_the_customers_own_cycle() -> None:
    p = periods.period("2026-11")
    assert (p.start, p.end) == (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))
    assert periods.period("2026-12").end == datetime(2027, 1, 1, tzinfo=UTC)
    assert periods.current_name(datetime(2026, 3, 5, tzinfo=UTC)) == "2026-03"


@pytest.mark.parametrize(
    ("name", "start", "end"),
    [
        # an anchor on the 31st: the last day of shorter months, then the 31st again
        ("2028-01", datetime(2028, 1, 31, 13, 45, tzinfo=UTC), datetime(2028, 2, 29, 13, 45, tzinfo=UTC)),
        ("2028-02", datetime(2028, 2, 29, 13, 45, tzinfo=UTC), datetime(2028, 3, 31, 13, 45, tzinfo=UTC)),
        ("2027-02", datetime(2027, 2, 28, 13, 45, tzinfo=UTC), datetime(2027, 3, 31, 13, 45, tzinfo=UTC)),
        ("2026-12", datetime(2026, 12, 31, 13, 45, tzinfo=UTC), datetime(2027, 1, 31, 13, 45, tzinfo=UTC)),
        ("2026-04", datetime(2026, 4, 30, 13, 45, tzinfo=UTC), datetime(2026, 5, 31, 13, 45, tzinfo=UTC)),
    ],
)
def test_an_anchor_on_the_31st_keeps_its_minute_and_clamps_the_day(
    name: str, start: datetime, end: datetime
) -> None:
    anchor = datetime(2026, 1, 31, 13, 45, 59, tzinfo=UTC)  # seconds dropped, as summaries need
    p = periods.period(name, anchor)
    assert (p.start, p.end) == (start, end)


def test_an_hour_belongs_to_the_period_holding_its_start() -> None:
    """The writer stamps an hour's meter events with its start: with a 10:45 anchor the 10:00 hour of
    the anchor day belongs to the closing cycle in Stripe, so it does here too."""
    anchor = datetime(2026, 3, 15, 10, 45, tzinfo=UTC)
    cycle = periods.period("2026-11", anchor)
    assert (cycle.start, cycle.end) == (
        datetime(2026, 11, 15, 10, 45, tzinfo=UTC),
        datetime(2026, 12, 15, 10, 45, tzinfo=UTC),
    )
    assert cycle.first_hour == datetime(2026, 11, 15, 11, tzinfo=UTC)
    assert cycle.hours_end == datetime(2026, 12, 15, 11, tzinfo=UTC)
    assert not cycle.holds(datetime(2026, 11, 15, 10, tzinfo=UTC))
    assert cycle.holds(datetime(2026, 12, 15, 10, tzinfo=UTC))
    assert periods.holding(datetime(2026, 11, 15, 10, tzinfo=UTC), anchor).name == "2026-10"
    assert periods.holding(datetime(2026, 11, 15, 11, tzinfo=UTC), anchor).name == "2026-11"
    # a calendar month is whole hours already
    month = periods.period("2026-11")
    assert (month.first_hour, month.hours_end) == (month.start, month.end)


@pytest.mark.parametrize(
    ("moment", "name"),
    [
        (datetime(2026, 12, 1, 0, 0, tzinfo=UTC), "2026-12"),
        (datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC), "2026-11"),
        (datetime(2027, 1, 1, 0, 30, tzinfo=UTC), "2027-01"),
        (datetime(2026, 12, 31, 23, 30, tzinfo=UTC), "2026-12"),
        (datetime(2028, 2, 29, 12, tzinfo=UTC), "2028-02"),
        (datetime(2028, 3, 1, 0, 10, tzinfo=UTC), "2028-03"),
    ],
)
def test_the_calendar_period_of_an_instant(moment: datetime, name: str) -> None:
    assert periods.current_name(moment) == name
    assert periods.holding(moment).holds(moment)


@pytest.mark.parametrize(
    "bad", ["2026-13", "2026-1", "26-01", "2026/01", "2026-11\n", " 2026-11", "0000-01", "9999-12", "1969-12"]
)
def test_period_names_outside_the_supported_range_are_refused(bad: str) -> None:
    with pytest.raises(periods.PeriodError):
        periods.parse_name(bad)


def test_the_supported_range_is_whole() -> None:
    assert periods.period("1970-01").start == datetime(1970, 1, 1, tzinfo=UTC)
    assert periods.period("9998-12", datetime(2026, 1, 31, 23, 59, tzinfo=UTC)).end.year == 9999


def test_any_hour_an_event_can_have_has_a_period() -> None:
    """Ingest takes old timestamps; their hours still belong to a period (names are range-checked,
    hours are not)."""
    old = datetime(576, 6, 17, 16, tzinfo=UTC)
    assert periods.holding(old).start == datetime(576, 6, 1, tzinfo=UTC)
    assert periods.holding(old, datetime(2026, 1, 31, 10, 45, tzinfo=UTC)).holds(old)
