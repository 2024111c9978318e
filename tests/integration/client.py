"""Small helpers tests use to feed the pipeline and wait for it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from stripemeter.adapters.kafka import lag
from stripemeter.domain.config import Settings
from stripemeter.schemas.topics import TopicNames


async def produce(
    settings: Settings, values: list[Any], *, raw: bool = False, key: bytes | None = None
) -> None:
    """Send each value as one message to usage.events (JSON-encoded unless ``raw``)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all",
        max_request_size=32 * 1024 * 1024,
        linger_ms=5,
    )
    await producer.start()
    try:
        topic = TopicNames(settings.topic_prefix, settings.app_id).events
        for value in values:
            await producer.send(topic, value if raw else orjson.dumps(value), key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 60, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.25)


async def caught_up(settings: Settings) -> bool:
    """Every consumer group of the pipeline has committed the end of every partition of the topics it
    reads (a group that never committed on a topic does not run in this test): whatever reached Kafka
    before is in PostgreSQL. Poll it before checking that something did not change."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        await consumer.topics()  # metadata: the partitions of each topic
        names = TopicNames(settings.topic_prefix, settings.app_id)
        for group, topics in lag.group_topics(names).items():
            offsets = await admin.list_consumer_group_offsets(group)
            committed = {tp: m.offset for tp, m in offsets.items() if tp.topic in topics and m.offset >= 0}
            read = {tp.topic for tp in committed}
            tps = [TopicPartition(t, p) for t in read for p in consumer.partitions_for_topic(t) or ()]
            ends = await consumer.end_offsets(tps)
            if any(ends[tp] > committed.get(tp, 0) for tp in tps):
                return False
        return True
    finally:
        await consumer.stop()
        await admin.close()


async def counters_of(settings: Settings, tenant: str) -> dict[tuple[str, str, int], int]:
    import psycopg

    async with await psycopg.AsyncConnection.connect(settings.database_url.value) as conn:
        cur = await conn.execute(
            "SELECT metric, customer_ref, (extract(epoch FROM bucket) * 1000)::bigint, total_micros::bigint"
            " FROM counters WHERE tenant_id = %s",
            (tenant,),
        )
        return {(m, c, int(b)): int(t) for m, c, b, t in await cur.fetchall() if t}


async def outcomes_of(settings: Settings, tenant: str) -> dict[str, int]:
    import psycopg

    async with await psycopg.AsyncConnection.connect(settings.database_url.value) as conn:
        cur = await conn.execute(
            "SELECT outcome, count(*) FROM events WHERE tenant_id = %s GROUP BY outcome", (tenant,)
        )
        return {outcome: int(n) for outcome, n in await cur.fetchall()}


async def read_topic(settings: Settings, topic: str, expect: int, timeout: float = 30) -> list[Any]:
    """Read ``expect`` records of ``topic`` from the beginning (fewer if the timeout passes)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        max_partition_fetch_bytes=32 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        while len(records) < expect and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            records.extend(m for msgs in batch.values() for m in msgs)
    finally:
        await consumer.stop()
    return records
