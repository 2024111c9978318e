"""Billing periods at the instants where calendars bite: the first and last hour of a month, New Year,
leap days, anchors on the 31st."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from stripemeter.reconcile import periods

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
