"""Standby copies of the tables, kept current by a plain changelog reader of our own.

Faust's own standby reader can skip records. Faust asks aiokafka for the records of the partitions it
has resumed, passing its own set of them, and changes that set while the call waits; aiokafka takes an
empty set for "every partition", and Faust drops the records of partitions outside its set, their
positions already past them. Between seeking a new standby partition to its start and resuming it,
Faust's recovery can leave that set empty, and the standby's first records were dropped that way; the
records after them were applied and stamped as persisted, so the promoted copy claimed the whole
changelog (docs/sizing.md, "Standby replicas"). Here each standby partition is read as the bulk
restore reads an active one (``changelog_reader``): from the store's persisted offset, one RocksDB
WriteBatch per fetch that also holds the new persisted offset. The copy never claims more than it
holds, whatever stops the reader, and a takeover reads only the changelog past that offset.

Faust is not told about the standby partitions (``BulkRecovery.add_standby``), so it never seeks,
resumes or writes them; they stay paused in its consumer. The reader stops, synchronously, when a
rebalance begins, before the partition can be restored as an active one, and starts again for the
new standby partitions once Faust's recovery has completed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import TP

from stripemeter.adapters.kafka.changelog_reader import apply_records, changelog_consumer, stop_quietly
from stripemeter.domain import metrics
from stripemeter.domain.kafka_access import KafkaAccess

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 10.0
RETRY_S = 5.0
# A fetch is applied in one go on the worker's event loop, between the meter's own work: 1 MiB (about
# 8,000 dedupe records) keeps each step to tens of milliseconds while a copy catches up.
FETCH_BYTES = 1024 * 1024


class _Run:
    """One reader's permission to write: withdrawn synchronously by ``StandbyCopies.stop``."""

    def __init__(self) -> None:
        self.writing = True


class StandbyCopies:
    """Keeps the stores of this worker's standby partitions current from their changelogs."""

    def __init__(self, kafka: KafkaAccess, read_committed: bool):
        self.kafka = kafka
        self.read_committed = read_committed
        self._run: _Run | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self, stores: dict[TP, Any]) -> None:
        """Copy these partitions (each with its table's RocksDB store) until ``stop``."""
        self.stop()
        metrics.STANDBY_PARTITIONS.set(len(stores))
        metrics.STANDBY_LAG.set(0)
        if not stores:
            return
        run = self._run = _Run()
        self._task = asyncio.ensure_future(self._copy(run, stores))

    def stop(self) -> None:
        """No write to a standby store happens after this returns (the reader's task ends soon after)."""
        if self._run is not None:
            self._run.writing = False
            self._run = None
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def close(self) -> None:
        """Stop, and wait for the reader's consumer to be closed."""
        task = self._task
        self.stop()
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)

    async def _copy(self, run: _Run, stores: dict[TP, Any]) -> None:
        """Follow the changelogs; a reader that fails starts again from the persisted offsets."""
        while run.writing:
            consumer = changelog_consumer(self.kafka, self.read_committed, FETCH_BYTES)
            try:
                await consumer.start()
                await _follow(consumer, run, stores)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("standby copies: the changelog reader failed; starting it again")
            finally:
                await stop_quietly(consumer)
            if run.writing:
                await asyncio.sleep(RETRY_S)


async def _follow(consumer: AIOKafkaConsumer, run: _Run, stores: dict[TP, Any]) -> None:
    parts = {TopicPartition(tp.topic, tp.partition): tp for tp in stores}
    consumer.assign(list(parts))
    next_offsets: dict[TopicPartition, int] = {}  # the first offset each copy does not hold yet
    for part, tp in parts.items():
        persisted = stores[tp].persisted_offset(tp)  # opens (creates) the partition's store
        next_offsets[part] = 0 if persisted is None else persisted + 1
        consumer.seek(part, next_offsets[part])
        log.info("standby copy of %s[%d]: reading from offset %d", tp.topic, tp.partition, next_offsets[part])
    started = last_said = time.monotonic()
    applied = 0
    while run.writing:
        fetched = await consumer.getmany(timeout_ms=1000)
        if not run.writing:  # a rebalance began while the fetch was in flight
            return
        for part, records in fetched.items():
            if not run.writing:  # stopped while the previous partition's batch yielded
                return
            if records:
                tp = parts[part]
                count = apply_records(stores[tp], tp, records, records[-1].offset)
                next_offsets[part] = records[-1].offset + 1
                applied += count
                metrics.STANDBY_RECORDS.inc(count)
                await asyncio.sleep(0)  # let the meter run between batches
        metrics.STANDBY_LAG.set(sum(behind(consumer.highwater(part), next_offsets[part]) for part in parts))
        if applied and time.monotonic() - last_said >= PROGRESS_EVERY_S:
            last_said = time.monotonic()
            log.info("standby copies: %d records applied (%.0f/s)", applied, applied / (last_said - started))


def behind(highwater: int | None, next_offset: int) -> int:
    """Records (or transaction markers) in the changelog past what the copy holds; 0 before a fetch."""
    return 0 if highwater is None else max(highwater - next_offset, 0)
