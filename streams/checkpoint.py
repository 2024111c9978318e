"""Checkpoint: publish touched counters, wait for every write, then acknowledge the input.

Order, and why:
1. send one usage.deltas record per touched counter (its current total and seq);
2. wait until the broker has acknowledged those and every changelog write made so far;
3. acknowledge the keyed messages processed before step 1, so Faust may commit their offsets.
A crash anywhere leaves those messages uncommitted; they are read again, skipped by the counters
(already applied) and their counters published again - the writer keeps the highest seq.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from stripemeter.streams.counting import split_counter_key
from stripemeter.streams.deltas import Delta, encode_delta
from stripemeter.streams.tables import TrackedTable

from stripemeter import metrics

log = logging.getLogger(__name__)

SendDelta = Callable[[bytes, bytes], Awaitable[asyncio.Future[Any]]]


class Checkpointer:
    def __init__(self, counters: TrackedTable, send_delta: SendDelta):
        self.counters = counters
        self.send_delta = send_delta
        self.touched: set[str] = set()
        self.pending: list[Any] = []  # faust events processed but not yet acknowledged
        self._lock = asyncio.Lock()

    def add(self, event: Any, touched: set[str]) -> None:
        self.pending.append(event)
        self.touched |= touched

    async def run(self) -> int:
        """One checkpoint; returns the number of deltas published."""
        async with self._lock:
            if not self.pending and not self.touched:
                return 0
            touched, self.touched = self.touched, set()
            pending, self.pending = self.pending, []
            futures = self.counters.take_unflushed()
            published = 0
            for key in touched:
                value = self.counters.get(key)
                if value is None:
                    continue
                tenant, metric, customer, bucket = split_counter_key(key)
                record = encode_delta(Delta(tenant, metric, customer, bucket, value[0], value[1]))
                routing = f"{tenant}|{metric}|{customer}".encode()
                futures.append(await self.send_delta(routing, record))
                published += 1
            if futures:
                await asyncio.gather(*futures)
            for event in pending:
                event.ack()
            metrics.DELTAS.inc(published)
            return published
