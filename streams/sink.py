"""Sink: usage.deltas -> the PostgreSQL counters snapshot the API reads.

Write, then commit: a batch is upserted (guarded by seq, so repeats are harmless) before its
offsets are committed.
"""

from __future__ import annotations

import asyncio
import logging

import psycopg
from aiokafka import AIOKafkaConsumer
from stripemeter.streams.deltas import decode_delta

from stripemeter.db.counters import upsert_counters

log = logging.getLogger(__name__)


class CounterSink:
    def __init__(self, bootstrap: str, topic: str, group_id: str, database_url: str):
        self.bootstrap = bootstrap
        self.topic = topic
        self.group_id = group_id
        self.database_url = database_url
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.bootstrap,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        conn = await psycopg.AsyncConnection.connect(self.database_url, autocommit=True)
        log.info("counter sink started: %s -> counters table", self.topic)
        try:
            while not self._stopping.is_set():
                batch = await consumer.getmany(timeout_ms=200, max_records=5000)
                if not batch:
                    continue
                deltas = [decode_delta(m.value) for msgs in batch.values() for m in msgs if m.value]
                await upsert_counters(conn, deltas)
                await consumer.commit({tp: msgs[-1].offset + 1 for tp, msgs in batch.items()})
        finally:
            await conn.close()
            await consumer.stop()

    def stop(self) -> None:
        self._stopping.set()
