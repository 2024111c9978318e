"""Expiring dedupe entries a step at a time, so the state stays bounded at any event rate.

The dedupe state holds every key of the lateness window: 48 h x the event rate, hundreds of millions
of entries at a sustained 1,000 events/s. A pass over all of it at once would stop the worker for
minutes. Each step instead checks, per partition, twice as many entries as were written since the
previous step (at least ``min_step``), going on from where that step stopped, in chunks that yield to
the event loop. A pass thus keeps up with the writes, and the state stays under about twice the window.

A complete pass also learns the earliest event time plus lateness left in the partition; with that of
every entry written since, the sweep knows when the first entry could expire and sleeps until then. A
worker whose window is not full yet (a fresh deployment, the first two days of a tenant) pays nothing.
A rebalance forgets it all (restored entries were written elsewhere), and so does a change of policies.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from typing import Protocol

from stripemeter.core.metering import NEVER, Metering
from stripemeter.domain.clock import SYSTEM
from stripemeter.domain.policy import expiry_horizon


class Entries(Protocol):
    def items(self, partition: int, from_key: bytes | None = None) -> Iterator[tuple[bytes, bytes]]: ...


class DedupeSweep:
    def __init__(
        self,
        metering: Metering,
        dedupe: Entries,
        margin_ms: int,
        min_step: int = 20_000,
        chunk: int = 2_000,
        clock_ms: Callable[[], int] = SYSTEM.ms,
    ):
        self.metering = metering
        self.clock_ms = clock_ms
        self.dedupe = dedupe
        self.margin_ms = margin_ms
        self.min_step = min_step
        self.chunk = chunk
        self._from: dict[int, bytes | None] = {}  # per partition: where the next step starts
        # per partition, the earliest ts + lateness of the entries held (known after a complete pass),
        # and of those kept or written during the pass under way
        self._due: dict[int, int] = {}
        self._pass_due: dict[int, int] = {}
        self._generation = 0  # bumped by forget(): a step that spans it must not record what it saw
        self._policies_version = metering.policies.version  # the policies the knowledge was gathered under

    def forget(self) -> None:
        """After a rebalance: the next step of every partition starts a new pass, knowing nothing."""
        self._from.clear()
        self._due.clear()
        self._pass_due.clear()
        self._generation += 1

    def idle(self, partition: int, now_ms: int) -> bool:
        """True when no entry of ``partition`` can expire yet, whatever the watermarks."""
        due = self._due.get(partition)
        return due is not None and due >= expiry_horizon(now_ms, 0, self.margin_ms)

    async def step(self, partition: int, interrupted: Callable[[], bool]) -> tuple[int, int]:
        """One step over ``partition``; returns (entries checked, entries expired)."""
        if self.metering.policies.version != self._policies_version:  # lateness may have shrunk
            self.forget()
            self._policies_version = self.metering.policies.version
        written, written_due = self.metering.take_written(partition)
        if partition in self._due:
            self._due[partition] = min(self._due[partition], written_due)
        pass_due = min(self._pass_due.get(partition, NEVER), written_due)
        self._pass_due[partition] = pass_due
        if self.idle(partition, self.clock_ms()):
            return 0, 0
        budget = max(self.min_step, 2 * written)
        generation = self._generation
        entries = self.dedupe.items(partition, from_key=self._from.get(partition))
        checked = expired = 0
        last: bytes | None = None
        complete = False
        while checked < budget:
            chunk = list(itertools.islice(entries, min(self.chunk, budget - checked)))
            if not chunk:
                complete = True
                break
            gone, kept_due = self.metering.expire_dedupe(partition, chunk, self.margin_ms, self.clock_ms())
            expired, pass_due = expired + gone, min(pass_due, kept_due)
            checked, last = checked + len(chunk), chunk[-1][0]
            await asyncio.sleep(0)
            if interrupted():
                break
        if generation != self._generation:
            pass  # a rebalance came in between: what this step saw may be stale
        elif complete:  # entries written meanwhile come with the next take_written
            self._from[partition] = None
            self._due[partition] = pass_due
            del self._pass_due[partition]
        elif last is not None:  # the last key checked is checked again next time (harmless)
            self._from[partition], self._pass_due[partition] = last, pass_due
        return checked, expired
