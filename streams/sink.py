"""Sink: what PostgreSQL must hold for queries and audits, from three topics.

- ``{app}-ledger``: counted, duplicate and too-late events -> the ``events`` ledger and watermarks;
- ``usage.events.dlq``: rejected inputs -> the ledger with outcome ``rejected``;
- ``usage.deltas``: counter totals -> the ``counters`` snapshot (newest seq wins).

Write, then commit: a batch is written in one transaction (idempotent: the ledger is keyed by the
input's source, counters are guarded by seq) before its offsets are committed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import psycopg
from aiokafka import AIOKafkaConsumer
from stripemeter.streams.deltas import Delta, decode_delta

from stripemeter import metrics
from stripemeter.db.counters import upsert_counters
from stripemeter.db.ledger import ledger_row, rejected_row, watermarks_of, write_ledger
from stripemeter.topics import TopicNames

log = logging.getLogger(__name__)


class PostgresSink:
    def __init__(self, bootstrap: str, names: TopicNames, group_id: str, database_url: str):
        self.bootstrap = bootstrap
        self.names = names
        self.group_id = group_id
        self.database_url = database_url
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            self.names.ledger,
            self.names.dlq,
            self.names.deltas,
            bootstrap_servers=self.bootstrap,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=32 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
        )
        await consumer.start()
        conn = await psycopg.AsyncConnection.connect(self.database_url, autocommit=True)
        log.info("postgres sink started: ledger, dead letters and deltas -> PostgreSQL")
        try:
            while not self._stopping.is_set():
                batch = await consumer.getmany(timeout_ms=200, max_records=2000)
                if not batch:
                    continue
                await self._write(conn, [m for msgs in batch.values() for m in msgs])
                await consumer.commit({tp: msgs[-1].offset + 1 for tp, msgs in batch.items()})
        finally:
            await conn.close()
            await consumer.stop()

    async def _write(self, conn: psycopg.AsyncConnection, messages: list[Any]) -> None:
        rows: list[tuple[Any, ...]] = []
        items: list[list[Any]] = []
        deltas: list[Delta] = []
        for msg in messages:
            try:
                if msg.topic == self.names.ledger:
                    chunk = orjson.loads(msg.value)
                    items.extend(chunk)
                    rows.extend(ledger_row(self.names.events, item) for item in chunk)
                elif msg.topic == self.names.dlq:
                    rows.append(rejected_row(orjson.loads(msg.value)))
                else:
                    deltas.append(decode_delta(msg.value))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                metrics.SINK_SKIPPED.labels(msg.topic).inc()
                log.error(
                    "skipping unreadable record %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, exc
                )
        await write_ledger(conn, rows, watermarks_of(items))
        await upsert_counters(conn, deltas)

    def stop(self) -> None:
        self._stopping.set()
