"""Instants as the wire writes them (pure): RFC 3339 in UTC with a ``Z``, the year always four digits.

Three precisions, each on purpose:

- ``iso_seconds``: ``2026-11-20T14:00:00Z``, the fraction dropped (hour buckets, periods, windows);
- ``iso_millis``: ``2026-11-20T14:03:11.250Z``, milliseconds always, truncated (event times);
- ``iso_exact``: what ``isoformat`` keeps, microseconds only when there are any
  (``2026-11-20T14:03:11Z`` or ``2026-11-20T14:03:11.250001Z``; times the application stamped).

A datetime is converted to UTC first (every caller holds an aware one). ``strftime("%Y")`` is not used:
it writes the year 999 as ``999``, which ``fromisoformat`` cannot read back.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache


def iso_seconds(moment: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ``."""
    d = moment.astimezone(UTC)
    return f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{d.hour:02d}:{d.minute:02d}:{d.second:02d}Z"


def iso_millis(moment: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_exact(moment: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ``, or ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` when there are microseconds."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@lru_cache(maxsize=4096)
def iso_hour(ms: int) -> str:
    """``iso_seconds`` of epoch milliseconds, remembered: hour buckets repeat in every record."""
    return iso_seconds(datetime.fromtimestamp(ms / 1000, tz=UTC))


def iso_ms(ms: int) -> str:
    """``iso_millis`` of epoch milliseconds."""
    return iso_millis(datetime.fromtimestamp(ms / 1000, tz=UTC))


def parse_iso_ms(text: str) -> int:
    """Epoch milliseconds of an RFC 3339 time with a ``Z`` or an offset: ``iso_hour``'s inverse."""
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
