"""Replay windows at fixed instants: durations relative to the injected now, widened to whole hours,
across month, year and leap-day boundaries."""

from __future__ import annotations

from datetime import datetime

import pytest

from stripemeter.replay.window import WindowError, parse_window

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
