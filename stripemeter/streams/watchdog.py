"""Restart the worker when Faust's table recovery stops making progress.

Seen here with faust-streaming 0.15.3: after a rebalance that hands this worker a partition whose
previous owner was killed, recovery sometimes waits forever for changelog records that never
arrive ("No event received for active tp ... since recovery start"), while a fresh start recovers
the same partition at once. Rather than sit there not counting, the worker re-executes itself: the
start is unclean, so table state is rebuilt from the changelogs and uncommitted input is read again.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

log = logging.getLogger(__name__)

STALL_SECONDS = 20.0


class RecoveryWatchdog:
    def __init__(self, recovery: Any, stall_seconds: float = STALL_SECONDS):
        self.recovery = recovery
        self.stall_seconds = stall_seconds
        self._remaining: int | None = None
        self._since = time.monotonic()

    def stalled(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        if not self.recovery.in_recovery:
            self._remaining = None
            return False
        remaining = int(self.recovery.active_remaining_total())
        if remaining != self._remaining:
            self._remaining, self._since = remaining, now
            return False
        return remaining > 0 and now - self._since > self.stall_seconds


def restart_process() -> None:
    """Replace this process with a fresh worker (same pid, same arguments)."""
    logging.shutdown()
    os.execv(sys.executable, [sys.executable, "-m", "stripemeter", *sys.argv[1:]])
