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
from stripemeter.adapters.kafka.incremental_configs import set_topic_configs
from stripemeter.domain.errors import Permanent
from stripemeter.domain.kafka_access import KafkaAccess
from stripemeter.schemas.topics import SINGLE_BROKER, Replication, TopicNames, TopicSpec, topic_specs

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


class TopicConfigRefused(Permanent, RuntimeError):
    """The broker refused to change a topic's configuration (the topic keeps its old one)."""


class ReplicationMismatch(Permanent, RuntimeError):
    """The topics' replication settings cannot hold on this cluster, or existing topics hold less:
    someone has to add brokers or replicas, or change the settings."""

    def __init__(self, problems: list[str]):
        super().__init__("topic replication: " + "; ".join(problems), code="replication_mismatch")
        self.problems = problems


async def _admin(kafka: KafkaAccess) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(**client_kwargs(kafka), request_timeout_ms=15000)
    await admin.start()
    return admin


async def ensure_topics(kafka: KafkaAccess, specs: list[TopicSpec]) -> EnsureResult:
    """Create missing topics and bring configs of existing ones in line; safe to run any number of times.

    Only the keys our specs name are changed (incrementally: an operator's other keys stay), and a
    change the broker refuses raises ``TopicConfigRefused``. Raises ``ReplicationMismatch`` before
    creating anything when the cluster cannot hold the specs' replication factor, or when an existing
    topic has fewer replicas than the spec asks for.
    """
    admin = await _admin(kafka)
    created: list[str] = []
    existing: list[str] = []
    reconfigured: list[str] = []
    try:
        await _require_replication(admin, specs)
        response = await admin.create_topics(
            [NewTopic(s.name, s.partitions, s.replication.factor, topic_configs=s.config()) for s in specs]
        )
        for name, code, message in response.topic_errors:
            if code == 0:
                created.append(name)
            elif code == TOPIC_ALREADY_EXISTS:
                existing.append(name)
            else:
                raise for_code(code)(f"creating topic {name}: {message}")
        if existing:
            reconfigured = await _align_configs(admin, [s for s in specs if s.name in existing])
            await _warn_on_partition_counts(admin, [s for s in specs if s.name in existing])
    finally:
        await admin.close()
    for name in created:
        log.info("created topic %s", name)
    return EnsureResult(created, existing, reconfigured)


async def _align_configs(admin: AIOKafkaAdminClient, specs: list[TopicSpec]) -> list[str]:
    """Set the keys whose values differ from the specs; returns the topics changed."""
    current = await describe_configs(admin, [s.name for s in specs])
    changes = {
        s.name: {k: v for k, v in s.config().items() if current.get(s.name, {}).get(k) != v} for s in specs
    }
    changes = {name: keys for name, keys in changes.items() if keys}
    refused = await set_topic_configs(admin, changes)
    if refused:
        raise TopicConfigRefused(
            "the broker refused to reconfigure "
            + "; ".join(
                f"{name} ({', '.join(changes[name])}): {why}" for name, why in sorted(refused.items())
            )
        )
    for name, keys in sorted(changes.items()):
        log.info("reconfigured topic %s: %s", name, ", ".join(f"{k}={v}" for k, v in sorted(keys.items())))
    return sorted(changes)


async def _warn_on_partition_counts(admin: AIOKafkaAdminClient, specs: list[TopicSpec]) -> None:
    partitions = await partition_counts(admin, [s.name for s in specs])
    for spec in specs:
        if partitions[spec.name] != spec.partitions:
            log.warning(
                "topic %s has %d partitions, the spec says %d; left as is (changing it re-keys data)",
                spec.name,
                partitions[spec.name],
                spec.partitions,
            )


async def check_replication(kafka: KafkaAccess, specs: list[TopicSpec]) -> None:
    """Raise ``ReplicationMismatch`` when the cluster or the existing topics cannot give the specs'
    replication (the worker's start-up check); topics that do not exist yet are not judged."""
    admin = await _admin(kafka)
    try:
        await _require_replication(admin, specs)
    finally:
        await admin.close()


async def _require_replication(admin: AIOKafkaAdminClient, specs: list[TopicSpec]) -> None:
    problems = replication_problems(
        len((await admin.describe_cluster())["brokers"]),
        {t["topic"]: t for t in await admin.describe_topics([s.name for s in specs])},
        await describe_configs(admin, [s.name for s in specs]),
        specs,
    )
    if problems:
        raise ReplicationMismatch(problems)


def replication_problems(
    brokers: int,
    topics: dict[str, dict[str, object]],
    configs: dict[str, dict[str, str]],
    specs: list[TopicSpec],
) -> list[str]:
    """What keeps ``specs`` from holding: too few brokers, existing topics with fewer replicas or a lower
    ``min.insync.replicas`` than asked for. More replicas than asked for is no problem."""
    problems: list[str] = []
    wanted = max((s.replication for s in specs), key=lambda r: r.factor, default=SINGLE_BROKER)
    if brokers < wanted.factor:
        problems.append(
            f"replication factor {wanted.factor} needs {wanted.factor} brokers, the cluster has {brokers}"
            " (set STRIPEMETER_TOPIC_REPLICATION_FACTOR and STRIPEMETER_TOPIC_MIN_INSYNC_REPLICAS to 1"
            " for a single broker)"
        )
    for spec in specs:
        topic = topics.get(spec.name)
        partitions = topic.get("partitions") if topic and topic.get("error_code") == 0 else None
        if not isinstance(partitions, list) or not partitions:
            continue  # missing: created with the spec's replication
        fewest = min(len(p["replicas"]) for p in partitions)
        if fewest < spec.replication.factor:
            problems.append(
                f"topic {spec.name} has partitions with {fewest} replica(s), fewer than the replication"
                f" factor {spec.replication.factor}: add replicas with kafka-reassign-partitions"
                " (docs/kafka-replication.md)"
            )
        isr = configs.get(spec.name, {}).get("min.insync.replicas")
        if isr is not None and int(isr) > fewest:
            problems.append(
                f"topic {spec.name} has min.insync.replicas={isr} but {fewest} replica(s): every write"
                " would be refused"
            )
    return problems


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


async def create_topics_of(
    kafka: KafkaAccess,
    app_id: str,
    topic_prefix: str,
    partitions: int,
    replication: Replication = SINGLE_BROKER,
) -> TopicNames:
    """Create every topic of one isolated deployment (benchmarks, tests); ``delete_topics_of`` undoes it."""
    names = TopicNames(topic_prefix, app_id)
    await ensure_topics(kafka, topic_specs(names, partitions, replication))
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
