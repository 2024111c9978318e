"""The replay window (pure): ``since`` / ``until`` as RFC 3339, ``now`` or a signed ISO 8601 duration,
widened to whole hours because counters are hour buckets."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from stripemeter.domain.errors import Invalid
from stripemeter.domain.instants import BadInstant, parse_instant_ms
from stripemeter.domain.periods import MAX_YEAR
from stripemeter.domain.timefmt import iso_seconds

HOUR_MS = 3_600_000
LAST_MS = int(datetime(MAX_YEAR + 1, 1, 1, tzinfo=UTC).timestamp() * 1000)  # the end of MAX_YEAR


class WindowError(Invalid, ValueError):
    """A bad ``since`` or ``until``: ``field`` names it, ``detail`` says what is wrong with it."""

    field: str

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(field, detail)


@dataclass(frozen=True)
class Window:
    since: datetime  # inclusive, on the hour
    until: datetime  # exclusive, on the hour

    def wire(self) -> dict[str, str]:
        return {"since": iso_seconds(self.since), "until": iso_seconds(self.until)}


def _instant(field: str, raw: object, now_ms: int) -> int:
    if not isinstance(raw, str) or not raw:
        raise WindowError(field, 'is required: RFC 3339, "now", or a duration like -PT24H')
    try:
        return parse_instant_ms(raw, now_ms)
    except BadInstant as exc:
        raise WindowError(field, exc.detail) from None


def _bounded(field: str, ms: int) -> int:
    """Within the years an event (from 1970 on, see stripemeter.schemas.events.parse_ts) and a billing period
    (up to ``periods.MAX_YEAR``) can have: outside them a window holds nothing, and its hours would
    not be written as four-digit years, or not at all."""
    if ms < 0:
        raise WindowError(field, "is before 1970")
    if ms > LAST_MS:
        raise WindowError(field, f"is after the end of {MAX_YEAR}")
    return ms


def parse_window(since_raw: object, until_raw: object, now_ms: int, max_seconds: int) -> Window:
    since_ms = _bounded("since", _instant("since", since_raw, now_ms))
    until_ms = _bounded("until", _instant("until", until_raw, now_ms))
    if since_ms >= until_ms:
        raise WindowError("since", "must be before until")
    since_ms -= since_ms % HOUR_MS
    until_ms += -until_ms % HOUR_MS
    if until_ms - since_ms > max_seconds * 1000:
        raise WindowError("since", f"the window is longer than the maximum of {max_seconds // 3600} hours")
    return Window(
        datetime.fromtimestamp(since_ms / 1000, tz=UTC), datetime.fromtimestamp(until_ms / 1000, tz=UTC)
    )
