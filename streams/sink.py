"""Sink: what PostgreSQL must hold for queries and audits, from three topics.

- ``{app}-ledger``: counted, duplicate and too-late events -> the ``events`` ledger and watermarks;
- ``usage.events.dlq``: rejected inputs -> the ledger with outcome ``rejected``;
- ``usage.deltas``: counter totals -> the ``counters`` snapshot (newest seq wins), with the app's id
  (its Stripe writer makes push rows from them when their deltas are gone).

Write, then commit: a batch is written in one transaction (idempotent: the ledger is keyed by the
input's source, counters are guarded by seq) before its offsets are committed. Records travel to
PostgreSQL as the raw JSON they were read as; PostgreSQL unpacks them (see ``db/ledger.py``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import psycopg
from aiokafka import AIOKafkaConsumer

from stripemeter.adapters.kafka import batching
from stripemeter.adapters.kafka.client_auth import client_kwargs
from stripemeter.adapters.kafka.fetch_wait import FETCH_MAX_WAIT_MS
from stripemeter.adapters.postgres import counters, ledger
from stripemeter.adapters.postgres.counters import upsert_counters
from stripemeter.adapters.postgres.ledger import rejected_row, write_ledger
from stripemeter.domain import metrics
from stripemeter.domain.clock import SYSTEM, Clock
from stripemeter.domain.kafka_access import KafkaAccess
from stripemeter.schemas.topics import TopicNames

log = logging.getLogger(__name__)

BATCH_RECORDS = 20_000  # records in one transaction at most
# A batch waits up to this long to fill: fewer, bigger transactions, and more deltas of one counter
# folded into one row update (DISTINCT ON in db/counters.py). At 10,000 events/s the sink made about
# 5 transactions a second of at most 2,000 records, and PostgreSQL spent more CPU than the meter.
BATCH_LINGER_SECONDS = 0.5


class PostgresSink:
    def __init__(
        self, kafka: KafkaAccess, names: TopicNames, group_id: str, database_url: str, clock: Clock = SYSTEM
    ):
        self.kafka = kafka
        self.clock = clock
        self.names = names
        self.group_id = group_id
        self.database_url = database_url
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            self.names.ledger,
            self.names.dlq,
            self.names.deltas,
            **client_kwargs(self.kafka),
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            max_partition_fetch_bytes=32 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
        )
        await consumer.start()
        conn = await psycopg.AsyncConnection.connect(self.database_url, autocommit=True)
        await self.prepare(conn)
        log.info("postgres sink started: ledger, dead letters and deltas -> PostgreSQL")
        try:
            while not self._stopping.is_set():
                batch = await batching.gather(consumer, BATCH_RECORDS, BATCH_LINGER_SECONDS, self._stopping)
                if not batch:
                    continue
                with metrics.SINK_BATCH_SECONDS.time():
                    await self._write(conn, [m for msgs in batch.values() for m in msgs])
                for tp, msgs in batch.items():
                    metrics.SINK_RECORDS.labels(tp.topic).inc(len(msgs))
                await batching.commit_handled(consumer, batch)
        finally:
            await conn.close()
            await consumer.stop()

    @staticmethod
    async def prepare(conn: psycopg.AsyncConnection) -> None:
        """The connection's temporary staging tables (ledger, dead letters, deltas)."""
        await ledger.create_staging(conn)
        await counters.create_staging(conn)

    async def _write(self, conn: psycopg.AsyncConnection, messages: list[Any]) -> None:
        """The batch in one transaction. If PostgreSQL refuses it (a record it cannot read), each
        record alone, in a savepoint of its own: the unreadable ones are skipped, the rest written."""
        records = self._readable(messages)
        try:
            async with conn.transaction():
                await self._apply(conn, records)
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
                    records.append((msg, rejected_row(orjson.loads(msg.value))))
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
        self._stopping.set()
