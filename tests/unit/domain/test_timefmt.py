from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from stripemeter.domain.timefmt import iso_exact, iso_hour, iso_millis, iso_ms, iso_seconds, parse_iso_ms

CET = timezone(timedelta(hours=1))


def ms_of(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp() * 1000)


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (datetime(1, 1, 1, tzinfo=UTC), "0001-01-01T00:00:00Z"),
        (datetime(999, 12, 31, 23, tzinfo=UTC), "0999-12-31T23:00:00Z"),  # strftime("%Y") writes "999"
        (datetime(2026, 11, 20, 14, 3, 11, 999_999, tzinfo=UTC), "2026-11-20T14:03:11Z"),  # not rounded
        (datetime(2026, 11, 20, 15, 3, 11, tzinfo=CET), "2026-11-20T14:03:11Z"),  # converted to UTC
        (datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC), "9999-12-31T23:59:59Z"),
    ],
)
def test_iso_seconds(moment: datetime, text: str) -> None:
    assert iso_seconds(moment) == text


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (datetime(1, 1, 1, tzinfo=UTC), "0001-01-01T00:00:00.000Z"),
        (datetime(999, 1, 1, 0, 0, 0, 5_000, tzinfo=UTC), "0999-01-01T00:00:00.005Z"),
        (datetime(2026, 11, 20, 14, 3, 11, 250_999, tzinfo=UTC), "2026-11-20T14:03:11.250Z"),  # truncated
        (datetime(2026, 11, 20, 15, 3, 11, tzinfo=CET), "2026-11-20T14:03:11.000Z"),
        (datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC), "9999-12-31T23:59:59.999Z"),
    ],
)
def test_iso_millis(moment: datetime, text: str) -> None:
    assert iso_millis(moment) == text


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (datetime(2026, 11, 20, 14, 3, 11, tzinfo=UTC), "2026-11-20T14:03:11Z"),
        (datetime(2026, 11, 20, 14, 3, 11, 250_000, tzinfo=UTC), "2026-11-20T14:03:11.250000Z"),
        (datetime(2026, 11, 20, 15, 3, 11, 1, tzinfo=CET), "2026-11-20T14:03:11.000001Z"),
        (datetime(999, 1, 1, tzinfo=UTC), "0999-01-01T00:00:00Z"),
    ],
)
def test_iso_exact_keeps_microseconds_only_when_there_are_any(moment: datetime, text: str) -> None:
    assert iso_exact(moment) == text


@pytest.mark.parametrize(
    "text",
    ["0001-01-01T00:00:00Z", "0999-01-01T05:00:00Z", "1969-12-31T23:00:00Z", "1970-01-01T00:00:00Z",
     "2026-11-18T08:00:00Z", "9999-12-31T23:00:00Z"],
)  # fmt: skip
def test_iso_hour_and_parse_iso_ms_are_inverse(text: str) -> None:
    ms = parse_iso_ms(text)
    assert ms == int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
    assert iso_hour(ms) == text


def test_epoch_milliseconds() -> None:
    assert iso_ms(0) == "1970-01-01T00:00:00.000Z"
    assert iso_ms(1_795_000_000_123) == "2026-11-18T11:06:40.123Z"
    assert iso_ms(-1) == "1969-12-31T23:59:59.999Z"
    assert iso_ms(ms_of(999, 6, 1)) == "0999-06-01T00:00:00.000Z"
    assert iso_hour(1_795_000_000_123) == "2026-11-18T11:06:40Z"
    assert parse_iso_ms("2026-11-18T11:06:40+01:00") == 1_795_000_000_000 - 3_600_000
