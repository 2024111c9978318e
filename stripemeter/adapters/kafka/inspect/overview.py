"""What the broker knows about our topics: partitions, offsets, configs, and the groups' lag.

Only our topics and our four consumer groups are asked about, so this stays fast on a dev broker
holding thousands of test topics. (aiokafka 0.14's DescribeGroups cannot decode Kafka 4.x answers,
so group state is not shown; committed offsets come from OffsetFetch, which works.)
"""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition

from stripemeter.adapters.kafka.admin import describe_configs
from stripemeter.adapters.kafka.client_auth import client_kwargs
from stripemeter.adapters.kafka.inspect.kinds import consumer_groups, is_ours
from stripemeter.domain.kafka_access import KafkaAccess
from stripemeter.schemas.topics import TopicNames

# The topic configs an operator needs to reason about retention, size limits and compaction.
CONFIGS_THAT_MATTER = (
    "cleanup.policy",
    "retention.ms",
    "retention.bytes",
    "max.message.bytes",
    "segment.bytes",
    "segment.ms",
    "min.insync.replicas",
    "min.compaction.lag.ms",
    "delete.retention.ms",
    "message.timestamp.type",
    "compression.type",
)


@dataclass(frozen=True)
class PartitionState:
    topic: str
    partition: int
    leader: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]
    start: int
    end: int

    @property
    def messages(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class TopicState:
    name: str
    partitions: list[PartitionState]
    config: dict[str, str]

    @property
    def messages(self) -> int:
        return sum(p.messages for p in self.partitions)


@dataclass(frozen=True)
class GroupLag:
    group: str
    role: str
    topic: str
    partition: int
    committed: int | None  # None: the group never committed here (it starts at the log start)
    end: int
    lag: int


@dataclass(frozen=True)
class Overview:
    topics: list[TopicState]
    lags: list[GroupLag]
    idle_groups: dict[str, str]  # group -> role, for groups without any committed offset here


def lag_rows(
    committed: dict[str, dict[TopicPartition, int]],
    roles: dict[str, str],
    topics: list[TopicState],
) -> list[GroupLag]:
    """Every partition of every topic a group has committed on (pure); uncommitted partitions of
    such a topic count from the log start."""
    by_topic = {t.name: t for t in topics}
    rows: list[GroupLag] = []
    for group, offsets in committed.items():
        for topic in sorted({tp.topic for tp in offsets} & by_topic.keys()):
            for p in by_topic[topic].partitions:
                done = offsets.get(TopicPartition(topic, p.partition))
                done = done if done is not None and done >= 0 else None
                lag = p.end - (done if done is not None else p.start)
                rows.append(GroupLag(group, roles[group], topic, p.partition, done, p.end, max(lag, 0)))
    return rows


async def _admin(kafka: KafkaAccess) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(**client_kwargs(kafka), request_timeout_ms=15000)
    await admin.start()
    return admin


async def topic_states(admin: AIOKafkaAdminClient, kafka: KafkaAccess, topics: list[str]) -> list[TopicState]:
    """Partitions with leader and offsets, and the configs that matter, of existing ``topics``."""
    if not topics:
        return []
    metadata = {t["topic"]: t for t in await admin.describe_topics(topics) if t["error_code"] == 0}
    configs = await describe_configs(admin, list(metadata))
    tps = [TopicPartition(t, p["partition"]) for t, m in metadata.items() for p in m["partitions"]]
    starts, ends = await _offsets(kafka, tps)
    states = []
    for name in sorted(metadata):
        partitions = [
            PartitionState(
                name,
                p["partition"],
                p["leader"],
                tuple(p["replicas"]),
                tuple(p["isr"]),
                starts[TopicPartition(name, p["partition"])],
                ends[TopicPartition(name, p["partition"])],
            )
            for p in sorted(metadata[name]["partitions"], key=lambda p: p["partition"])
        ]
        config = {k: v for k, v in configs.get(name, {}).items() if k in CONFIGS_THAT_MATTER}
        states.append(TopicState(name, partitions, config))
    return states


async def _offsets(
    kafka: KafkaAccess, tps: list[TopicPartition]
) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
    consumer = AIOKafkaConsumer(**client_kwargs(kafka), enable_auto_commit=False)
    await consumer.start()
    try:
        return await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
    finally:
        await consumer.stop()


async def overview(kafka: KafkaAccess, names: TopicNames, expected: list[str]) -> Overview:
    """Our topics (``expected`` plus any other existing topic of our prefix or app id) and lag."""
    admin = await _admin(kafka)
    try:
        existing = set(await admin.list_topics())
        ours = sorted((set(expected) & existing) | {t for t in existing if is_ours(names, t)})
        topics = await topic_states(admin, kafka, ours)
        roles = consumer_groups(names.app_id)
        committed = {group: await _committed(admin, group) for group in roles}
    finally:
        await admin.close()
    lags = lag_rows({g: c for g, c in committed.items() if c}, roles, topics)
    idle = {g: roles[g] for g in roles if not any(row.group == g for row in lags)}
    return Overview(topics, lags, idle)


async def describe_one(
    kafka: KafkaAccess, names: TopicNames, topic: str
) -> tuple[TopicState | None, list[GroupLag]]:
    """One topic's partitions, configs and the lag of our groups on it; None when it does not exist."""
    admin = await _admin(kafka)
    try:
        if topic not in set(await admin.list_topics()):
            return None, []
        states = await topic_states(admin, kafka, [topic])
        roles = consumer_groups(names.app_id)
        committed = {group: await _committed(admin, group) for group in roles}
    finally:
        await admin.close()
    return states[0], lag_rows({g: c for g, c in committed.items() if c}, roles, states)


async def _committed(admin: AIOKafkaAdminClient, group: str) -> dict[TopicPartition, int]:
    return {tp: meta.offset for tp, meta in (await admin.list_consumer_group_offsets(group)).items()}
