"""Replay windows at fixed instants: durations relative to the injected now, widened to whole hours,
across month, year and leap-day boundaries."""

from __future__ import annotations

from datetime import datetime

import pytest

from stripemeter.core.replay_window import WindowError, parse_window

MAX = 35 * 24 * 3600


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


@pytest.mark.parametrize(
    ("now", "since", "until", "window"),
    [
        ("2027-01-01T00:20:00Z", "-PT72H", "now", ("2026-12-29T00:00:00Z", "2027-01-01T01:00:00Z")),
        ("2028-03-01T01:10:00Z", "-P2D", "now", ("2028-02-28T01:00:00Z", "2028-03-01T02:00:00Z")),
        ("2026-11-30T23:59:00Z", "-PT1M", "+PT2M", ("2026-11-30T23:00:00Z", "2026-12-01T01:00:00Z")),
        (
            "2026-12-02T00:45:00Z",
            "2026-11-01T00:00:00Z",
            "2026-12-01T00:00:00Z",
            ("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"),
        ),
    ],
)
def test_windows_are_whole_hours_around_the_injected_now(
    now: str, since: str, until: str, window: tuple[str, str]
) -> None:
    assert parse_window(since, until, ms(now), MAX).wire() == {"since": window[0], "until": window[1]}


def test_the_maximum_counts_from_whole_hours() -> None:
    now = ms("2027-01-01T00:20:00Z")
    assert parse_window("-P35D", "2027-01-01T00:00:00Z", now, MAX)
    with pytest.raises(WindowError) as info:
        parse_window("-P35D", "now", now, MAX)  # widened to 35 days and an hour
    assert info.value.field == "since"


@pytest.mark.parametrize(
    ("since", "until", "field"),
    [
        ("0999-01-01T00:00:00Z", "0999-01-02T00:00:00Z", "since"),  # its hours were written "999-..."
        ("1969-12-31T00:00:00Z", "1970-01-01T01:00:00Z", "since"),
        ("-P999999999D", "-P999999998D", "since"),  # beyond any datetime: was a 500
        ("9998-12-31T00:00:00Z", "9999-01-01T00:00:01Z", "until"),
        ("+P999999999D", "+P999999999DT1H", "since"),
    ],
)
def test_windows_outside_the_years_events_can_have_are_refused_naming_the_field(
    since: str, until: str, field: str
) -> None:
    with pytest.raises(WindowError) as info:
        parse_window(since, until, ms("2026-11-20T00:00:00Z"), MAX)
    assert info.value.field == field


def test_windows_at_the_edges_of_the_supported_years() -> None:
    now = ms("2026-11-20T00:00:00Z")
    assert parse_window("1970-01-01T00:00:00Z", "1970-01-02T00:00:00Z", now, MAX)
    assert parse_window("9998-12-31T23:30:00Z", "9999-01-01T00:00:00Z", now, MAX).wire() == {
        "since": "9998-12-31T23:00:00Z",
        "until": "9999-01-01T00:00:00Z",
    }
