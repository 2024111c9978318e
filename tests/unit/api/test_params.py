"""Query instants: `usage/history` and `events` take what replay and `topics tail` take."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from stripemeter.api import params
from stripemeter.api.appkeys import SETTINGS
from stripemeter.api.errors import ApiError
from stripemeter.domain.clock import Clock
from stripemeter.domain.config import Settings

NOW = datetime(2027, 3, 1, 0, 30, tzinfo=UTC)


def since(raw: str) -> datetime | None:
    app = web.Application()
    app[SETTINGS] = Settings(clock_offset_seconds=Clock.starting_at(NOW).offset_seconds)
    return params.optional_time(make_mocked_request("GET", f"/?since={raw}", app=app), "since")


def test_durations_now_and_rfc3339_are_instants_on_the_deployments_clock() -> None:
    one_day_ago = since("-P1D")
    assert one_day_ago is not None and abs(one_day_ago - datetime(2027, 2, 28, 0, 30, tzinfo=UTC)).seconds < 5
    later = since("-PT6H")
    assert later is not None and abs(later - datetime(2027, 2, 28, 18, 30, tzinfo=UTC)).seconds < 5
    assert since("2026-11-20T14:00:00%2B02:00") == datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    assert since("2026-11-20T14:00:00.250Z") == datetime(2026, 11, 20, 14, 0, 0, 250_000, tzinfo=UTC)
    now = since("now")
    assert now is not None and abs(now - NOW).seconds < 5
    assert since("") is None


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("yesterday", "neither a duration"),
        ("2026-11-20T14:00:00", "no UTC offset"),
        ("-P", "not an ISO 8601 duration"),
        ("0001-01-01T00:00:00%2B01:00", "out of range"),
    ],
)
def test_anything_else_is_refused_naming_the_parameter(raw: str, says: str) -> None:
    with pytest.raises(ApiError) as refused:
        since(raw)
    assert refused.value.field == "since" and says in refused.value.message
