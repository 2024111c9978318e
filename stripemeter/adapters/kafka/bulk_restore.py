"""Restore the tables' RocksDB from their changelogs in bulk, before Faust's own recovery reads them.

Faust's recovery hands each changelog record through its fetcher, a queue and an event object
(300-600 us a record here): a partition of millions of dedupe entries took minutes to hours. This
does the same work the way the meter writes: one plain aiokafka consumer reads each active changelog
partition from the store's persisted offset to the end Faust's recovery measured (its highwater), in large
fetches, and applies every record as Faust's ``apply_changelog_batch`` does (raw key; a value is put,
a tombstone deletes; the last record of a key wins), one RocksDB WriteBatch per fetch. The same
WriteBatch sets the persisted offset to the consumer's position minus one, so the store never claims
more than it holds, whatever stops the restore. Faust's recovery then starts at that offset and finds
nothing, or only the records written since, to read.

It runs inside Faust's recovery task, where Faust computes its start offsets (after the rebalance
callback returned, so the consumer keeps heartbeating), and stops early enough to stay inside the
time Faust gives that step (``broker_request_timeout``); then it has Faust start its recovery again,
as a new rebalance would, and goes on from the persisted offsets.

The same recovery keeps the standby partitions' stores current with our own reader instead of
Faust's (``standby_copies.py``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery
from faust.types import TP
from faust.types.tables import CollectionT

from stripemeter.adapters.kafka.changelog_reader import apply_records, changelog_consumer, stop_quietly
from stripemeter.adapters.kafka.standby_copies import StandbyCopies
from stripemeter.domain.kafka_access import KafkaAccess

log = logging.getLogger(__name__)

BUDGET_SHARE = 0.75  # of Faust's timeout for the step that runs the restore
PROGRESS_EVERY_S = 10.0


def restoring_table_manager(kafka: KafkaAccess) -> type[TableManager]:
    """Faust's table manager, with a recovery that restores active partitions in bulk first."""

    class BulkRecovery(Recovery):
        def __init__(self, app: Any, tables: Any, **kwargs: Any) -> None:
            super().__init__(app, tables, **kwargs)
            self.copied_standbys: set[TP] = set()
            self.standby_copies: StandbyCopies | None = None

        async def _build_offsets(self, consumer: Any, tps: Any, destination: Any, title: str) -> None:
            if title == "active" and tps:
                budget = float(self.app.conf.broker_request_timeout) * BUDGET_SHARE
                if not await restore_in_bulk(self, kafka, set(tps), destination, budget):
                    # Faust's next step sees the signal and starts its recovery again (as for a new
                    # rebalance), which comes back here and goes on from the persisted offsets
                    self.signal_recovery_start.set()
            await super()._build_offsets(consumer, tps, destination, title)

        # Standby partitions are copied by StandbyCopies, never by Faust's reader (see its module).

        def add_standby(self, table: CollectionT, tp: TP) -> None:
            self.tp_to_table[tp] = table
            self.copied_standbys.add(tp)

        def on_partitions_revoked(self, revoked: set[TP]) -> None:
            self._copies().stop()  # first: a partition copied so far may be restored as active next
            super().on_partitions_revoked(revoked)

        async def on_rebalance(
            self, assigned: set[TP], revoked: set[TP], newly_assigned: set[TP], generation_id: int = 0
        ) -> None:
            self._copies().stop()
            self.copied_standbys = set()
            await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)

        async def on_recovery_completed(self, generation_id: int = 0) -> None:
            await super().on_recovery_completed(generation_id)
            if self.app.consumer_generation_id == generation_id:
                tables: dict[TP, Any] = {tp: self.tp_to_table[tp] for tp in self.copied_standbys}
                self._copies().start(
                    {tp: t.data for tp, t in tables.items() if hasattr(t.data, "_db_for_partition")}
                )

        async def on_stop(self) -> None:
            await self._copies().close()
            await super().on_stop()

        def _copies(self) -> StandbyCopies:
            if self.standby_copies is None:
                self.standby_copies = StandbyCopies(kafka, read_committed=bool(self.app.in_transaction))
            return self.standby_copies

    class RestoringTableManager(TableManager):
        @property
        def recovery(self) -> Recovery:
            if self._recovery is None:
                self._recovery = BulkRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
            return self._recovery

    return RestoringTableManager


async def restore_in_bulk(
    recovery: Recovery, kafka: KafkaAccess, tps: set[TP], offsets: Any, budget_s: float
) -> bool:
    """Apply the changelog past each partition's persisted offset up to Faust's highwater;
    ``offsets[tp]`` (Faust's start offsets) follows what the store holds. Partitions of stores other
    than RocksDB are left to Faust. False when time ran out before the end."""
    tables: dict[TP, Any] = {tp: recovery.tp_to_table[tp] for tp in tps if tp in recovery.tp_to_table}
    stores = {tp: table.data for tp, table in tables.items() if hasattr(table.data, "_db_for_partition")}
    ranges = {}
    for tp, store in stores.items():
        persisted = store.persisted_offset(tp)
        start, end = 0 if persisted is None else persisted + 1, recovery.active_highwaters.get(tp, -1) + 1
        if start < end:
            ranges[tp] = (start, end)
            log.info("restoring %s[%d] in bulk: offsets %d to %d", tp.topic, tp.partition, start, end)
    if not ranges:
        return True
    consumer = changelog_consumer(kafka, read_committed=bool(recovery.app.in_transaction))
    await consumer.start()
    try:
        return await _restore(consumer, stores, ranges, offsets, time.monotonic() + budget_s)
    finally:
        await stop_quietly(consumer)


async def _restore(
    consumer: AIOKafkaConsumer,
    stores: dict[TP, Any],
    ranges: dict[TP, tuple[int, int]],
    offsets: Any,
    deadline: float,
) -> bool:
    parts = {TopicPartition(tp.topic, tp.partition): tp for tp in ranges}
    consumer.assign(list(parts))
    ends = {part: ranges[tp][1] for part, tp in parts.items()}
    for part, tp in parts.items():
        consumer.seek(part, ranges[tp][0])
    pending = set(parts)
    started = last_said = time.monotonic()
    applied = 0
    while pending and time.monotonic() < deadline:
        fetched = await consumer.getmany(*pending, timeout_ms=500)
        for part, records in fetched.items():
            tp = parts[part]
            position = await consumer.position(part)
            applied += apply_records(stores[tp], tp, records, min(position, ends[part]) - 1)
            offsets[tp] = stores[tp].persisted_offset(tp)
            if position >= ends[part]:
                pending.discard(part)
        if time.monotonic() - last_said >= PROGRESS_EVERY_S:
            last_said = time.monotonic()
            log.info("bulk restore: %d records applied (%.0f/s)", applied, applied / (last_said - started))
    if applied:
        took = max(time.monotonic() - started, 1e-3)
        log.info("bulk restore: %d records applied in %.1f s (%.0f/s)", applied, took, applied / took)
    if pending:
        log.info(
            "bulk restore: Faust's time for this step is up; going on in a new round: %s", sorted(pending)
        )
    return not pending
