"""An adjustment's ``ts`` takes the bounds of a usage event's: from 1970 to 1 h ahead. An earlier one
made a delta whose bucket the Stripe writer could not read back ("999-01-01T05:00:00Z"), or, with a
billing anchor, a period before year 1."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from stripemeter.api.adjustments import _ts
from stripemeter.api.errors import ApiError
from stripemeter.domain import periods

NOW = datetime(2026, 11, 20, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    "raw",
    [
        "0999-01-01T05:00:00Z",
        "0001-01-01T00:00:00Z",
        "0001-01-01T00:00:00+05:00",  # before year 1 in UTC
        "1969-12-31T23:59:59.999Z",
        "1970-01-01T00:30:00+01:00",
        "9999-12-31T23:59:59-05:00",
        "2026-11-20T01:00:01Z",  # more than 1 h ahead
    ],
)
def test_an_adjustment_time_outside_the_events_bounds_is_a_400_naming_ts(raw: str) -> None:
    with pytest.raises(ApiError) as info:
        _ts(raw, NOW)
    assert (info.value.status, info.value.field) == (400, "ts")


def test_the_earliest_adjustment_time_has_a_period_even_with_a_billing_anchor() -> None:
    ts = _ts("1970-01-01T00:00:00Z", NOW)
    assert ts == datetime(1970, 1, 1, tzinfo=UTC)
    anchor = datetime(2026, 1, 15, 10, 45, tzinfo=UTC)
    assert periods.holding(ts, anchor).name == "1969-12"
    assert _ts("2026-11-20T01:00:00+00:00", NOW) == datetime(2026, 11, 20, 1, tzinfo=UTC)
