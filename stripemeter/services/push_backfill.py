"""Push rows from the counters table, so that nothing counted is left behind.

The writer makes push rows from the usage.deltas records it reads. Usage counted while no writer ran
(before Stripe was configured), or while the writers were down longer than usage.deltas keeps records
(7 days), has no such records left; its counters are in PostgreSQL (``counters``, written by the sink
with its app's id). A pass reads the app's counters of the hours Stripe still takes, in key order and
in batches, and records each one whose push row is missing or holds an older total (a lower seq), as
if its delta had been read: the same partition (``schemas.partitioning``, as Kafka would choose it) and
the same billing period. Every upsert is seq-guarded (``push_totals.record_latest``), so a pass changes
nothing twice and any number of writers may run one at once.

A writer starts a pass when it starts, ``START_BATCHES`` batches a round until that pass is done (its
pushes go on meanwhile), then one every ``interval_s``, one batch a round.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

import psycopg

from stripemeter.adapters.postgres import push_totals
from stripemeter.adapters.postgres.push_totals import CounterKey, CounterRow, Latest
from stripemeter.core.push_plan import MAX_AGE_S
from stripemeter.domain import metrics, periods
from stripemeter.domain.clock import Clock
from stripemeter.schemas.partitioning import delta_routing_key

log = logging.getLogger(__name__)

BATCH = 2000
START_BATCHES = 10  # batches a round of the first pass
PASS_INTERVAL_S = 600.0

PartitionOf = Callable[[str], int]  # routing key -> usage.deltas partition


class CounterBackfill:
    def __init__(self, app_id: str, clock: Clock, batch: int = BATCH, interval_s: float = PASS_INTERVAL_S):
        self.app_id = app_id
        self.clock = clock
        self.batch = batch
        self.interval_s = interval_s
        self._cursor: CounterKey | None = None  # where the pass under way goes on; None: no pass
        self._oldest = datetime.min.replace(tzinfo=UTC)
        self._next_pass = float("-inf")  # clock seconds
        self.passes = 0  # passes completed

    async def run_pass(self, conn: psycopg.AsyncConnection, partition_of: PartitionOf) -> int:
        """A whole pass now; returns how many push rows it made or brought up to date."""
        self._cursor, self._next_pass = None, float("-inf")
        recorded = await self.step(conn, partition_of)
        while self._cursor is not None:
            recorded += await self.step(conn, partition_of)
        return recorded

    async def round(self, conn: psycopg.AsyncConnection, partition_of: PartitionOf) -> int:
        """The writer's share of a round: one batch, or ``START_BATCHES`` until the first pass is done."""
        recorded = await self.step(conn, partition_of)
        for _ in range(START_BATCHES - 1 if not self.passes else 0):
            if self._cursor is None:
                break
            recorded += await self.step(conn, partition_of)
        return recorded

    async def step(self, conn: psycopg.AsyncConnection, partition_of: PartitionOf) -> int:
        """One batch of the pass under way, or of a new one if one is due; returns how many push rows it
        made or brought up to date."""
        now = self.clock()
        if self._cursor is None:
            if now < self._next_pass:
                return 0
            self._oldest = datetime.fromtimestamp(now - MAX_AGE_S, tz=UTC)
            self._cursor = (self._oldest, "", "", "")  # before every counter of the window
        rows = await push_totals.counters_after(conn, self.app_id, self._oldest, self._cursor, self.batch)
        latest = await self._latest(conn, [r for r in rows if r.behind], partition_of)
        if latest:
            await push_totals.record_latest(conn, latest, self.clock.utc())
            metrics.STRIPE_BACKFILLED.inc(len(latest))
            log.info("stripe writer: recorded %d counters from the counters table", len(latest))
        # on only once recorded: a batch PostgreSQL gave up (a concurrent writer) is read again
        if len(rows) < self.batch:
            self._cursor, self._next_pass = None, now + self.interval_s
            self.passes += 1
        else:
            self._cursor = rows[-1].scan_key
        return len(latest)

    async def _latest(
        self, conn: psycopg.AsyncConnection, rows: list[CounterRow], partition_of: PartitionOf
    ) -> list[Latest]:
        """The counters as usage.deltas would have told them: their partition and billing period."""
        anchors = await push_totals.anchors(conn, ((r.tenant_id, r.customer_ref) for r in rows))
        latest = []
        for r in rows:
            try:
                start = periods.holding(r.bucket, anchors[r.tenant_id, r.customer_ref]).start
            except (ValueError, OverflowError) as exc:  # a bucket no billing period can hold
                log.error("stripe writer: skipped counter %s/%s/%s @%s: %s", *r.scan_key[1:], r.bucket, exc)
                continue
            partition = partition_of(delta_routing_key(r.tenant_id, r.metric, r.customer_ref))
            fields = (r.tenant_id, r.metric, r.customer_ref, r.bucket, r.total_micros, r.seq)
            latest.append(Latest(*fields, self.app_id, partition, start))
        return latest
