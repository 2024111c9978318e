"""Instants operators type: a signed ISO 8601 duration relative to now, ``now``, or RFC 3339 (pure)."""

from __future__ import annotations

import re
from datetime import datetime

from stripemeter.domain.errors import Invalid

# Years and months have no fixed length, so they are refused rather than guessed.
_DURATION = re.compile(
    r"^(?P<sign>[+-]?)P(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)
_UNIT_MS = {"weeks": 7 * 86_400_000, "days": 86_400_000, "hours": 3_600_000, "minutes": 60_000}


class BadInstant(Invalid, ValueError):
    """The text is neither a duration, ``now``, nor an RFC 3339 time with an offset. The parser does not
    know which input the text came from: ``field`` is None, ``detail`` is the message."""

    def __init__(self, detail: str) -> None:
        super().__init__(None, detail)


def parse_duration_ms(text: str) -> int:
    """``-PT1H`` -> -3600000; ``P1DT2H`` -> 93600000."""
    match = _DURATION.match(text.strip().upper())
    parts = match.groupdict() if match else {}
    if not any(parts.get(unit) for unit in (*_UNIT_MS, "seconds")):
        raise BadInstant(f"{text!r} is not an ISO 8601 duration like -PT1H or -P7D")
    total = sum(int(parts[unit]) * ms for unit, ms in _UNIT_MS.items() if parts[unit])
    if parts["seconds"]:
        total += round(float(parts["seconds"]) * 1000)
    return -total if parts["sign"] == "-" else total


def parse_instant_ms(text: str, now_ms: int) -> int:
    """Epoch milliseconds of ``text``: a duration is relative to ``now_ms``."""
    value = text.strip()
    if value.lower() == "now":
        return now_ms
    if value.upper().lstrip("+-").startswith("P"):
        return now_ms + parse_duration_ms(value)
    try:
        instant = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise BadInstant(
            f"{text!r} is neither a duration (-PT1H) nor an RFC 3339 time (2026-11-20T14:00:00Z)"
        ) from None
    if instant.tzinfo is None:
        raise BadInstant(f"{text!r} has no UTC offset; add Z or +HH:MM")
    return int(instant.timestamp() * 1000)
