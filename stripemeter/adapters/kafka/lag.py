"""Consumer lag of the pipeline's groups, in messages and in seconds.

Messages: end offset minus committed offset. Seconds: the age of the oldest record not yet consumed
(the record at the committed offset), 0 when a partition is caught up. Measured with one admin client
and one group-less consumer, so measuring never joins or disturbs a group.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition

from stripemeter.adapters.kafka.client_auth import client_kwargs
from stripemeter.adapters.kafka.inspect.kinds import consumer_groups
from stripemeter.domain.kafka_access import KafkaAccess
from stripemeter.schemas.topics import TopicNames


@dataclass(frozen=True)
class Lag:
    group: str
    topic: str
    partition: int
    messages: int
    seconds: float


def group_topics(names: TopicNames) -> dict[str, list[str]]:
    """Which topics each of the pipeline's groups consumes (see streams/)."""
    groups = list(consumer_groups(names.app_id))
    meter, intake, sink, writer = groups
    return {
        meter: [names.keyed],
        intake: [names.events],
        sink: [names.ledger, names.dlq, names.deltas],
        writer: [names.deltas],
    }


async def measure(kafka: KafkaAccess, names: TopicNames, now: float | None = None) -> list[Lag]:
    admin = AIOKafkaAdminClient(**client_kwargs(kafka), request_timeout_ms=10000)
    consumer = AIOKafkaConsumer(**client_kwargs(kafka), enable_auto_commit=False, request_timeout_ms=10000)
    await admin.start()
    await consumer.start()
    try:
        wanted = group_topics(names)
        committed: dict[str, dict[TopicPartition, int]] = {}
        for group, topics in wanted.items():
            offsets = await admin.list_consumer_group_offsets(group)
            committed[group] = {
                tp: m.offset for tp, m in offsets.items() if tp.topic in topics and m.offset >= 0
            }
        tps = sorted({tp for offsets in committed.values() for tp in offsets})
        if not tps:
            return []
        ends = await consumer.end_offsets(tps)
        oldest: dict[tuple[TopicPartition, int], int] = {}
        for offsets in committed.values():  # one fetch per group: two groups may share a partition
            behind = {tp: offset for tp, offset in offsets.items() if ends[tp] > offset}
            oldest.update(await _timestamps(consumer, behind))
    finally:
        await consumer.stop()
        await admin.close()
    now = time.time() if now is None else now
    lags = []
    for group, offsets in committed.items():
        for tp, offset in sorted(offsets.items()):
            messages = max(ends[tp] - offset, 0)
            ts = oldest.get((tp, offset))
            seconds = max(now - ts / 1000, 0.0) if messages and ts is not None else 0.0
            lags.append(Lag(group, tp.topic, tp.partition, messages, seconds))
    return lags


async def _timestamps(
    consumer: AIOKafkaConsumer, positions: dict[TopicPartition, int]
) -> dict[tuple[TopicPartition, int], int]:
    """Timestamp (ms) of the record at each position; one fetch for all partitions."""
    if not positions:
        return {}
    consumer.assign(list(positions))
    for tp, offset in positions.items():
        consumer.seek(tp, offset)
    found: dict[tuple[TopicPartition, int], int] = {}
    deadline = time.monotonic() + 3
    while len(found) < len(positions) and time.monotonic() < deadline:
        batch = await consumer.getmany(timeout_ms=500, max_records=len(positions) * 4)
        for tp, records in batch.items():
            if records and (tp, positions[tp]) not in found:
                found[(tp, positions[tp])] = records[0].timestamp
                consumer.pause(tp)
    return found
