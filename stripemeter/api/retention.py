"""The ledger's retention as the API enforces it: a read of the ledger over a window that starts
before the oldest event time the ledger keeps is refused (400 naming ``since``) rather than answered
with part of the window (``adapters/postgres/ledger_partitions.py``; docs/replay.md)."""

from __future__ import annotations

from datetime import datetime

from stripemeter.adapters.postgres.ledger_partitions import retention_start
from stripemeter.core.replay_window import WindowError
from stripemeter.domain.timefmt import iso_seconds


def check_since(since: datetime, now: datetime, retention_days: int) -> None:
    """Raise a 400 naming ``since`` when ``since`` is before the ledger's retention start."""
    start = retention_start(now, retention_days)
    if since < start:
        raise WindowError(
            "since",
            f"is before {iso_seconds(start)}, the oldest event time the ledger keeps"
            f" (STRIPEMETER_LEDGER_RETENTION_DAYS={retention_days})",
        )
