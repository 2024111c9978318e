"""Sink: what PostgreSQL must hold for queries and audits, from three topics.

- ``{app}-ledger``: counted, duplicate and too-late events -> the ``events`` ledger and watermarks;
- ``usage.events.dlq``: rejected inputs -> the ledger with outcome ``rejected``;
- ``usage.deltas``: counter totals -> the ``counters`` snapshot (newest seq wins), with the app's id
  (its Stripe writer makes push rows from them when their deltas are gone).

A batch is written in one transaction (idempotent: the ledger is keyed by the input's source, counters
are guarded by seq) together with the offset of the next record of each partition it read
(``sink_offsets``); its offsets are committed to Kafka after that, for lag monitoring. The database is
the truth for what it holds: on every partition assignment the sink seeks to the offsets the database
stores, so a restore of PostgreSQL to an earlier point, or a failover to a replica that was behind, is
followed by the records the database lost being written again (docs/recovery.md). A partition the
database has no offset for yet takes Kafka's committed offset (or the log's start), which is stored
at once: a deployment that ran before the offsets were stored goes on where it was.

Records travel to PostgreSQL as the raw JSON they were read as; PostgreSQL unpacks them (see
``adapters/postgres/ledger.py``).
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any

import orjson
import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from stripemeter.adapters.kafka.batching import ConsumerSettings
from stripemeter.adapters.postgres import counters, ledger, ledger_partitions, sink_offsets
from stripemeter.adapters.postgres.counters import upsert_counters
from stripemeter.adapters.postgres.ledger import rejected_row, write_ledger
from stripemeter.core.sink_resume import resume_at
from stripemeter.domain import metrics
from stripemeter.domain.clock import SYSTEM, Clock
from stripemeter.domain.kafka_access import KafkaAccess
from stripemeter.schemas.topics import TopicNames
from stripemeter.streams.consumer_stage import Batch, ConsumerStage, StageHooks

log = logging.getLogger(__name__)

BATCH_RECORDS = 20_000  # records in one transaction at most
# A batch waits up to this long to fill: fewer, bigger transactions, and more deltas of one counter
# folded into one row update (DISTINCT ON in adapters/postgres/counters.py). At 10,000 events/s the sink made
# about 5 transactions a second of at most 2,000 records, and PostgreSQL spent more CPU than the meter.
BATCH_LINGER_SECONDS = 0.5
RESUME_RETRY_SECONDS = 1.0  # between tries to seek newly assigned partitions when PostgreSQL failed
UPKEEP_SECONDS = 3600.0  # between upkeeps of the ledger's partitions (one a day is enough; cheap)
UPKEEP_RETRY_SECONDS = 60.0  # after an upkeep that failed
DEFAULT_RETENTION_DAYS = 45  # STRIPEMETER_LEDGER_RETENTION_DAYS's default (domain/config.py)


class PostgresSink(StageHooks):
    def __init__(
        self,
        kafka: KafkaAccess,
        names: TopicNames,
        group_id: str,
        database_url: str,
        clock: Clock = SYSTEM,
        retention_days: int = DEFAULT_RETENTION_DAYS,
    ):
        self.kafka = kafka
        self.retention_days = retention_days
        self._next_upkeep = 0.0  # time.monotonic() when the ledger's partitions are looked after next
        self.clock = clock
        self.names = names
        self.group_id = group_id
        self.database_url = database_url
        self.unresumed: set[TopicPartition] = set()  # assigned, paused, not sought to the database's offsets
        self._resume_tried = 0.0
        self.resumed = 0  # partitions sought to the database's offsets so far
        self.stage = ConsumerStage(
            kafka,
            ConsumerSettings(
                tuple(self.topics),
                group_id,
                max_records=BATCH_RECORDS,
                linger_seconds=BATCH_LINGER_SECONDS,
                max_partition_fetch_bytes=32 * 1024 * 1024,
                fetch_max_bytes=64 * 1024 * 1024,
            ),
        )

    async def run(self) -> None:
        conn = await psycopg.AsyncConnection.connect(self.database_url, autocommit=True)
        try:
            await self.prepare(conn)
            await self.ledger_upkeep()
            log.info("postgres sink started: ledger, dead letters and deltas -> PostgreSQL")
            await self.stage.run(partial(self._handle, conn), hooks=self)
        finally:
            await conn.close()

    async def _handle(self, conn: psycopg.AsyncConnection, batch: Batch) -> None:
        with metrics.SINK_BATCH_SECONDS.time():
            await self._write(conn, [m for msgs in batch.values() for m in msgs])
        for tp, msgs in batch.items():
            metrics.SINK_RECORDS.labels(tp.topic).inc(len(msgs))

    # --- the database is the truth for the offsets: partitions start where it says -------------------

    async def assigned(self, consumer: AIOKafkaConsumer, partitions: set[TopicPartition]) -> None:
        """Partitions given to the sink stay paused until they are sought to the database's offsets;
        if that fails, ``between_batches`` tries again."""
        if partitions:
            consumer.pause(*partitions)
            self.unresumed |= partitions
            await self.resume_pending(consumer)

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        self.unresumed -= partitions

    async def between_batches(self, consumer: AIOKafkaConsumer) -> None:
        if time.monotonic() >= self._next_upkeep:
            await self.ledger_upkeep()
        if self.unresumed and time.monotonic() - self._resume_tried >= RESUME_RETRY_SECONDS:
            await self.resume_pending(consumer)

    async def ledger_upkeep(self) -> None:
        """The ledger's day partitions created ahead and dropped past retention (one sink at a time;
        see ``adapters/postgres/ledger_partitions.py``). A failure is logged and tried again later: rows
        of a day without a partition wait in the default partition meanwhile."""
        try:
            async with await psycopg.AsyncConnection.connect(self.database_url, autocommit=True) as conn:
                # a clock moved ahead (STRIPEMETER_CLOCK_OFFSET_SECONDS: tests, demos) drops nothing
                # the real clock keeps
                now = min(self.clock.utc(), SYSTEM.utc())
                await ledger_partitions.upkeep(conn, now, self.retention_days)
        except (psycopg.Error, OSError) as exc:
            retry = UPKEEP_RETRY_SECONDS
            log.error("ledger partition upkeep failed (%s); trying again in %.0f s", exc, retry)
            self._next_upkeep = time.monotonic() + retry
            return
        self._next_upkeep = time.monotonic() + UPKEEP_SECONDS

    @property
    def topics(self) -> list[str]:
        return self.names.sink_inputs

    async def resume_pending(self, consumer: AIOKafkaConsumer) -> None:
        """Seek the partitions assigned since the last call to the database's offsets and resume them;
        if PostgreSQL (or Kafka) fails, they stay paused until the next try."""
        self._resume_tried = time.monotonic()
        partitions = self.unresumed & consumer.assignment()
        try:
            await self.resume_from_database(consumer, partitions)
        except (psycopg.Error, KafkaError, OSError) as exc:
            log.error(
                "could not seek %d partition(s) to PostgreSQL's offsets (%s); they stay paused, trying again"
                " in %.0f s", len(partitions), exc, RESUME_RETRY_SECONDS,
            )  # fmt: skip
            return
        self.unresumed -= partitions
        self.resumed += len(partitions)
        consumer.resume(*(partitions & consumer.assignment()))  # not those revoked meanwhile

    async def resume_from_database(self, consumer: AIOKafkaConsumer, assigned: set[TopicPartition]) -> None:
        """Seek each assigned partition to the offset the database stores; a partition without one
        takes Kafka's committed offset (or the log's start), stored here from now on."""
        if not assigned:
            return
        partitions = sorted(assigned)
        starts = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        async with await psycopg.AsyncConnection.connect(self.database_url, autocommit=True) as conn:
            stored = await sink_offsets.load(conn, self.group_id, self.topics)
            adopted: dict[tuple[str, int], int] = {}
            for tp in partitions:
                if (tp.topic, tp.partition) not in stored:
                    committed = await consumer.committed(tp)
                    adopted[(tp.topic, tp.partition)] = starts[tp] if committed is None else committed
            if adopted:
                await sink_offsets.adopt(conn, self.group_id, adopted)
                log.info(
                    "no offset stored in PostgreSQL for %s: taking Kafka's (%s)",
                    ", ".join(f"{t}[{p}]" for t, p in sorted(adopted)),
                    ", ".join(str(adopted[k]) for k in sorted(adopted)),
                )
                stored = await sink_offsets.load(conn, self.group_id, self.topics)
            resumes = {
                tp: resume_at(stored[(tp.topic, tp.partition)], starts[tp], ends[tp]) for tp in partitions
            }
            # what retention removed is counted once: the log's start is stored as where the sink goes on
            gone = {(tp.topic, tp.partition): r.offset for tp, r in resumes.items() if r.lost}
            await sink_offsets.save(conn, self.group_id, gone)
        held = consumer.assignment()
        for tp, resume in resumes.items():
            if resume.lost:
                metrics.SINK_OFFSETS_LOST.labels(tp.topic).inc(resume.lost)
                log.error(
                    "%s[%d]: PostgreSQL holds the rows up to offset %d, but the topic starts at %d now:"
                    " retention removed %d offsets the sink never wrote (their rows are missing);"
                    " going on from %d",
                    tp.topic, tp.partition, stored[(tp.topic, tp.partition)], starts[tp], resume.lost,
                    resume.offset,
                )  # fmt: skip
            elif resume.ahead:
                metrics.SINK_OFFSETS_AHEAD.labels(tp.topic).inc()
                log.error(
                    "%s[%d]: PostgreSQL holds the rows up to offset %d, past the topic's end (%d): this is"
                    " not the log the database was written from (another cluster, a recreated topic);"
                    " reading it from its start %d, and its rows keyed like existing ones are not written"
                    " (docs/recovery.md)",
                    tp.topic, tp.partition, stored[(tp.topic, tp.partition)], ends[tp], resume.offset,
                )  # fmt: skip
            if tp in held:  # not revoked meanwhile
                consumer.seek(tp, resume.offset)

    @staticmethod
    async def prepare(conn: psycopg.AsyncConnection) -> None:
        """The connection's temporary staging tables (ledger, dead letters, deltas)."""
        await ledger.create_staging(conn)
        await counters.create_staging(conn)

    async def _write(self, conn: psycopg.AsyncConnection, messages: list[Any]) -> None:
        """The batch in one transaction. If PostgreSQL refuses it (a record it cannot read), each
        record alone, in a savepoint of its own: the unreadable ones are skipped, the rest written."""
        records = self._readable(messages)
        offsets = self._next_offsets(messages)
        try:
            async with conn.transaction():
                await self._apply(conn, records)
                await sink_offsets.save(conn, self.group_id, offsets)
            return
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            log.warning(
                "PostgreSQL refused a batch of %d records (%s); writing them one by one", len(records), exc
            )
        async with conn.transaction():
            for record in records:
                try:
                    async with conn.transaction():
                        await self._apply(conn, [record])
                except (psycopg.DataError, psycopg.IntegrityError) as exc:
                    self._skip(record[0], exc)
            await sink_offsets.save(conn, self.group_id, offsets)

    @staticmethod
    def _next_offsets(messages: list[Any]) -> dict[tuple[str, int], int]:
        """The offset of the next record of each partition the batch holds records of."""
        offsets: dict[tuple[str, int], int] = {}
        for msg in messages:
            key = (msg.topic, msg.partition)
            offsets[key] = max(offsets.get(key, 0), msg.offset + 1)
        return offsets

    def _readable(self, messages: list[Any]) -> list[tuple[Any, Any]]:
        """(message, payload) pairs: ledger and delta records as raw bytes, dead letters as rows."""
        records: list[tuple[Any, Any]] = []
        for msg in messages:
            if msg.value is None:
                self._skip(msg, "no value")
            elif msg.topic != self.names.dlq:
                records.append((msg, msg.value))
            else:
                try:
                    records.append((msg, rejected_row(orjson.loads(msg.value), msg.timestamp)))
                except (orjson.JSONDecodeError, AttributeError, TypeError) as exc:
                    self._skip(msg, exc)
        return records

    async def _apply(self, conn: psycopg.AsyncConnection, records: list[tuple[Any, Any]]) -> None:
        by_topic: dict[str, list[Any]] = {self.names.ledger: [], self.names.dlq: [], self.names.deltas: []}
        for msg, payload in records:
            by_topic[msg.topic].append(payload)
        await write_ledger(conn, self.names.events, by_topic[self.names.ledger], by_topic[self.names.dlq])
        await upsert_counters(conn, by_topic[self.names.deltas], self.clock.utc(), self.names.app_id)

    @staticmethod
    def _skip(msg: Any, reason: object) -> None:
        metrics.SINK_SKIPPED.labels(msg.topic).inc()
        log.error("skipping unreadable record %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, reason)

    def stop(self) -> None:
        self.stage.stop()
