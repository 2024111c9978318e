"""The ledger partitions' arithmetic (pure): which days to create, which partitions are past
retention, and where retention starts."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from stripemeter.adapters.postgres.ledger_partitions import (
    UNPLACED,
    Partition,
    day_start,
    days_to_create,
    past_retention,
    retention_start,
    time_window,
)
from stripemeter.api.retention import check_since
from stripemeter.core.replay_window import WindowError

NOW = datetime(2027, 3, 10, 15, 30, tzinfo=UTC)
DAY = timedelta(days=1)


def day(n: int) -> Partition:
    start = day_start(NOW.date()) + n * DAY
    return Partition(f"d{n}", start, start + DAY)


def test_retention_starts_at_the_start_of_the_day_that_many_days_ago() -> None:
    assert retention_start(NOW, 45) == datetime(2027, 1, 24, tzinfo=UTC)
    assert retention_start(datetime(2027, 3, 10, 0, 0, tzinfo=UTC), 1) == datetime(2027, 3, 9, tzinfo=UTC)


def test_only_days_no_partition_holds_are_created() -> None:
    first = Partition("events_unpartitioned", None, day_start(NOW.date()) + 2 * DAY)
    partitions = [first, day(3), day(5)]
    created = days_to_create(partitions, NOW.date() - 10 * DAY, NOW.date() + 6 * DAY)
    assert created == [NOW.date() + n * DAY for n in (2, 4, 6)]
    assert days_to_create([], date(2027, 1, 1), date(2027, 1, 1)) == [date(2027, 1, 1)]


def test_a_partition_is_past_retention_only_when_all_of_it_is() -> None:
    first = Partition("events_unpartitioned", None, day_start(NOW.date()) - 3 * DAY)
    partitions = [first, day(-3), day(-2), day(-1)]
    start = day_start(NOW.date()) - 2 * DAY
    assert [p.name for p in past_retention(partitions, start)] == ["events_unpartitioned", "d-3"]
    assert past_retention([Partition("open", day_start(NOW.date()), None)], NOW + 400 * DAY) == []


def test_a_window_keeps_to_its_partitions_and_the_unplaced_rows() -> None:
    assert time_window("%(a)s", "%(b)s") == (
        f"(ledger_time >= %(a)s AND ledger_time < %(b)s OR ledger_time = '{UNPLACED}')"
    )
    assert time_window("%(a)s", None) == f"(ledger_time >= %(a)s OR ledger_time = '{UNPLACED}')"
    assert time_window(None, None) == "TRUE"


def test_a_since_before_retention_is_refused_naming_it() -> None:
    check_since(retention_start(NOW, 45), NOW, 45)
    with pytest.raises(WindowError) as refused:
        check_since(retention_start(NOW, 45) - timedelta(seconds=1), NOW, 45)
    assert refused.value.field == "since"
    assert "2027-01-24T00:00:00Z" in refused.value.detail and "RETENTION_DAYS=45" in refused.value.detail
