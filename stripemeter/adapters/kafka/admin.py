"""Topic administration on the real broker: create what is missing, align configs, describe."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code
from aiokafka.structs import TopicPartition

from stripemeter.adapters.kafka.client_auth import client_kwargs
from stripemeter.domain.kafka_access import KafkaAccess
from stripemeter.schemas.topics import TopicNames, TopicSpec, topic_specs

log = logging.getLogger(__name__)

TOPIC_ALREADY_EXISTS = TopicAlreadyExistsError.errno


@dataclass(frozen=True)
class TopicInfo:
    name: str
    partitions: int
    config: dict[str, str]
    messages: int  # end offsets minus start offsets, summed over partitions


@dataclass(frozen=True)
class EnsureResult:
    created: list[str]
    existing: list[str]
    reconfigured: list[str]


async def _admin(kafka: KafkaAccess) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(**client_kwargs(kafka), request_timeout_ms=15000)
    await admin.start()
    return admin


async def ensure_topics(kafka: KafkaAccess, specs: list[TopicSpec]) -> EnsureResult:
    """Create missing topics and bring configs of existing ones in line; safe to run any number of times."""
    admin = await _admin(kafka)
    created: list[str] = []
    existing: list[str] = []
    reconfigured: list[str] = []
    try:
        response = await admin.create_topics(
            [NewTopic(s.name, s.partitions, 1, topic_configs=s.config()) for s in specs]
        )
        for name, code, message in response.topic_errors:
            if code == 0:
                created.append(name)
            elif code == TOPIC_ALREADY_EXISTS:
                existing.append(name)
            else:
                raise for_code(code)(f"creating topic {name}: {message}")
        if existing:
            current = await describe_configs(admin, existing)
            by_name = {s.name: s for s in specs}
            stale = [
                n for n in existing if any(current[n].get(k) != v for k, v in by_name[n].config().items())
            ]
            if stale:
                await admin.alter_configs(
                    [ConfigResource(ConfigResourceType.TOPIC, n, by_name[n].config()) for n in stale]
                )
                reconfigured.extend(stale)
            partitions = await partition_counts(admin, existing)
            for name in existing:
                if partitions[name] != by_name[name].partitions:
                    log.warning(
                        "topic %s has %d partitions, the spec says %d; left as is (changing it re-keys data)",
                        name,
                        partitions[name],
                        by_name[name].partitions,
                    )
    finally:
        await admin.close()
    for name in created:
        log.info("created topic %s", name)
    return EnsureResult(created, existing, reconfigured)


async def describe_configs(admin: AIOKafkaAdminClient, topics: list[str]) -> dict[str, dict[str, str]]:
    responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t) for t in topics])
    out: dict[str, dict[str, str]] = {}
    for response in responses:
        for resource in response.resources:
            _code, _msg, _type, name, entries = resource[:5]
            out[name] = {entry[0]: entry[1] for entry in entries}
    return out


async def partition_counts(admin: AIOKafkaAdminClient, topics: list[str]) -> dict[str, int]:
    return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(topics)}


async def list_topic_names(kafka: KafkaAccess) -> list[str]:
    admin = await _admin(kafka)
    try:
        return list(await admin.list_topics())
    finally:
        await admin.close()


async def create_topics_of(kafka: KafkaAccess, app_id: str, topic_prefix: str, partitions: int) -> TopicNames:
    """Create every topic of one isolated deployment (benchmarks, tests); ``delete_topics_of`` undoes it."""
    names = TopicNames(topic_prefix, app_id)
    await ensure_topics(kafka, topic_specs(names, partitions))
    return names


async def delete_topics_of(kafka: KafkaAccess, app_id: str, topic_prefix: str) -> int:
    """Delete every topic of one isolated deployment: its prefixed topics and Faust's ``{app_id}-``
    internals (a broker holding thousands of leftovers restarts slowly). Best effort: a broker that
    cannot be reached only leaves them over."""
    try:
        admin = await _admin(kafka)
    except KafkaError as exc:
        log.warning("could not delete the topics of %s: %s", app_id, exc)
        return 0
    try:
        doomed = [t for t in await admin.list_topics() if t.startswith((topic_prefix, f"{app_id}-"))]
        for start in range(0, len(doomed), 100):
            await admin.delete_topics(doomed[start : start + 100])
        return len(doomed)
    except KafkaError as exc:
        log.warning("could not delete the topics of %s: %s", app_id, exc)
        return 0
    finally:
        await admin.close()


async def describe(kafka: KafkaAccess, topics: list[str] | None = None) -> list[TopicInfo]:
    """Partitions, retention/cleanup config and message counts of ``topics`` (default: all)."""
    admin = await _admin(kafka)
    try:
        names = sorted(topics if topics is not None else await admin.list_topics())
        names = [n for n in names if not n.startswith("__")]
        if not names:
            return []
        counts = await partition_counts(admin, names)
        configs = await describe_configs(admin, names)
    finally:
        await admin.close()
    messages = await message_counts(kafka, counts)
    return [TopicInfo(n, counts[n], configs.get(n, {}), messages.get(n, 0)) for n in names]


async def message_counts(kafka: KafkaAccess, partitions: dict[str, int]) -> dict[str, int]:
    consumer = AIOKafkaConsumer(**client_kwargs(kafka), enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t, n in partitions.items() for p in range(n)]
        if not tps:
            return {}
        starts = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    totals: dict[str, int] = {}
    for tp in tps:
        totals[tp.topic] = totals.get(tp.topic, 0) + ends[tp] - starts[tp]
    return totals


DEFAULT_MESSAGE_BYTES = 1024 * 1024 + 12  # the broker's default max.message.bytes


async def message_limits(kafka: KafkaAccess, topics: list[str]) -> dict[str, int]:
    """Each topic's ``max.message.bytes`` as the broker has it (what a produced message must fit)."""
    admin = await _admin(kafka)
    try:
        configs = await describe_configs(admin, topics)
    finally:
        await admin.close()
    return {t: int(configs.get(t, {}).get("max.message.bytes") or DEFAULT_MESSAGE_BYTES) for t in topics}
