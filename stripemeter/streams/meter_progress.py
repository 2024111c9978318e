"""What the meter has read of each keyed partition, to catch Faust handing it a partition out of order
or not at all (a restart reads from the committed offset again, and exactly: see checkpoint.py).

- **A skip**: the keyed topic's offsets have no holes (one idempotent producer per intake, no
  transactions), so a message whose offset lies beyond the next one expected means messages were
  left out: after an assignment, the first message of a partition must be the one at its committed
  offset (its earliest one when none was committed), and each next one follows the last. Faust can
  resume a partition from where its fetcher was instead of where it seeked during a rebalance.
  Nothing past the hole may be counted or acknowledged.
- **A stall**: an assigned partition holds messages beyond what the meter read, and the meter read
  nothing of it for ``stall_seconds`` while no rebalance or table recovery ran (whatever it read of
  the others): seen after a rebalance that handed over a partition whose owner was killed, and for a
  partition Faust never fetched after an assignment.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

STALL_SECONDS = 30.0


class MeterProgress:
    def __init__(self, stall_seconds: float = STALL_SECONDS) -> None:
        self.stall_seconds = stall_seconds
        self.expected: dict[int, int] = {}  # partition -> the next offset it should hand the meter
        self.last_read: dict[int, float] = {}  # partition -> when it was last read, or seen caught up
        self.since = time.monotonic()  # when every partition's stall clock last started again

    def assigned(self) -> None:
        """Partitions were (re)assigned: each starts again at its committed offset."""
        self.expected.clear()
        self.last_read.clear()
        self.since = time.monotonic()

    def skipped(
        self, partition: int, offset: int, committed: int | None, now: float | None = None
    ) -> int | None:
        """Note a message read; returns the first offset it skipped over, or None when in order. A
        message read again (an offset before the expected one, after a seek back) is in order."""
        self.last_read[partition] = time.monotonic() if now is None else now
        # a partition never committed starts at its earliest offset: anything past 0 is checked
        # against it (Meter.skipped), so records dropped before its first message are never passed
        expected = self.expected.get(partition, committed or 0)
        self.expected[partition] = offset + 1
        if offset > expected:
            return expected
        return None

    def stalled(self, behind: Mapping[int, int], quiet: bool, now: float | None = None) -> bool:
        """``behind``: per assigned partition, messages beyond what the meter read (``behind()``);
        ``quiet``: no rebalance or recovery running, nothing waiting on PostgreSQL. True when a
        partition's messages wait and the meter read none of them for ``stall_seconds``."""
        now = time.monotonic() if now is None else now
        if not quiet:  # busy otherwise: every clock starts again
            self.last_read.clear()
            self.since = now
            return False
        stalled = False
        for partition, waiting in behind.items():
            if not waiting:
                self.last_read[partition] = now  # caught up: its clock starts when messages wait
            elif now - self.last_read.get(partition, self.since) > self.stall_seconds:
                stalled = True
        return stalled

    def behind(self, ends: Mapping[int, int], starts: Mapping[int, int | None]) -> dict[int, int]:
        """Per partition, the messages beyond what the meter read; ``starts``: where the consumer
        starts each partition it has read nothing of (its committed offset, or the earliest when none
        was committed: a partition never committed that the meter never reads is a stall too).
        Partitions of no known position: none."""
        out = {}
        for partition, end in ends.items():
            position = self.expected.get(partition, starts.get(partition))
            if position is not None:
                out[partition] = max(end - position, 0)
        return out
