"""Expiring dedupe entries a step at a time, so the state stays bounded at any event rate.

The dedupe state holds every key of the lateness window: 48 h x the event rate, hundreds of millions
of entries at a sustained 1,000 events/s. A pass over all of it at once would stop the worker for
minutes. Each step instead checks, per partition, twice as many entries as were written since the
previous step (at least ``min_step``), going on from where that step stopped, in chunks that yield to
the event loop. A pass thus keeps up with the writes, and the state stays under about twice the window.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from stripemeter.streams.metering import Metering


class Entries(Protocol):
    def items(self, partition: int, from_key: bytes | None = None) -> Iterator[tuple[bytes, bytes]]: ...


class DedupeSweep:
    def __init__(
        self, metering: Metering, dedupe: Entries, margin_ms: int, min_step: int = 20_000, chunk: int = 2_000
    ):
        self.metering = metering
        self.dedupe = dedupe
        self.margin_ms = margin_ms
        self.min_step = min_step
        self.chunk = chunk
        self._from: dict[int, bytes | None] = {}  # per partition: where the next step starts

    async def step(self, partition: int, interrupted: Callable[[], bool]) -> tuple[int, int]:
        """One step over ``partition``; returns (entries checked, entries expired)."""
        budget = max(self.min_step, 2 * self.metering.take_new_entries(partition))
        entries = self.dedupe.items(partition, from_key=self._from.get(partition))
        checked = expired = 0
        last: bytes | None = None
        while checked < budget:
            chunk = list(itertools.islice(entries, min(self.chunk, budget - checked)))
            if not chunk:
                break
            now_ms = int(time.time() * 1000)
            expired += self.metering.expire_dedupe(partition, chunk, self.margin_ms, now_ms)
            checked, last = checked + len(chunk), chunk[-1][0]
            await asyncio.sleep(0)
            if interrupted():
                break
        # the last key checked is checked again next time (harmless); None: the pass is complete
        self._from[partition] = last if checked >= budget else None
        return checked, expired
