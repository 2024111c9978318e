"""Where a consumer group stands in its topics, read without joining it: the logs' bounds, the group's
committed offsets and whether any member runs (an operator's rewind waits for none)."""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition

from stripemeter.adapters.kafka.client_auth import client_kwargs
from stripemeter.domain.kafka_access import KafkaAccess


@dataclass(frozen=True)
class GroupPositions:
    bounds: dict[tuple[str, int], tuple[int, int]]  # (topic, partition) -> (log start, log end)
    committed: dict[tuple[str, int], int]  # the group's committed offsets in those partitions
    members: int  # consumers in the group now


async def group_positions(kafka: KafkaAccess, group_id: str, topics: list[str]) -> GroupPositions:
    admin = AIOKafkaAdminClient(**client_kwargs(kafka), request_timeout_ms=10000)
    consumer = AIOKafkaConsumer(**client_kwargs(kafka), enable_auto_commit=False, request_timeout_ms=10000)
    await admin.start()
    await consumer.start()
    try:
        described_topics = await admin.describe_topics(topics)
        tps = sorted(
            TopicPartition(t["topic"], p["partition"])
            for t in described_topics
            if t["error_code"] == 0
            for p in t["partitions"]
        )
        starts = await consumer.beginning_offsets(tps) if tps else {}
        ends = await consumer.end_offsets(tps) if tps else {}
        offsets = await admin.list_consumer_group_offsets(group_id)
        described = await admin.describe_consumer_groups([group_id])
    finally:
        await consumer.stop()
        await admin.close()
    # a DescribeGroups response's groups: (error, group id, state, protocol type, protocol, members, ...)
    members = sum(len(group[5]) for response in described for group in response.groups)
    return GroupPositions(
        bounds={(tp.topic, tp.partition): (starts[tp], ends[tp]) for tp in tps},
        committed={
            (tp.topic, tp.partition): meta.offset
            for tp, meta in offsets.items()
            if tp.topic in topics and meta.offset >= 0
        },
        members=members,
    )
