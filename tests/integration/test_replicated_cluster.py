"""Replication factor 3 on a three-broker cluster: a broker killed with its disk lost costs nothing.

Node 1 of the cluster is the KRaft controller and a broker; nodes 2 and 3 are brokers. The topics are
created with the deployment's defaults (replication factor 3, min.insync.replicas 2). While events
stream, broker 3 is killed (-9) and its data directory deleted; the pipeline goes on with the other two,
the broker comes back with an empty disk and copies its replicas back; the counters and the ledger equal
the oracle.
"""

from __future__ import annotations

import asyncio
import random
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiokafka.admin import AIOKafkaAdminClient

from stripemeter.adapters.kafka.admin import (
    ReplicationMismatch,
    check_replication,
    delete_topics_of,
    ensure_topics,
)
from stripemeter.domain.config import Settings
from stripemeter.schemas.topics import THREE_BROKERS, deployment_specs
from stripemeter.tools.local.kafka import LocalKafka
from stripemeter.tools.local.kafka_cluster import LocalKafkaCluster
from tests.integration.client import eventually
from tests.integration.harness import StartWorker, isolated_settings
from tests.integration.test_exactly_once import assert_matches_oracle, during, send_anchors, stream_slowly
from tests.integration.workload import build

pytestmark = pytest.mark.exactly_once  # never rerun by CI; repeated by ./dev soak


def _port_pair() -> int:
    """A client port and the next one (the controller's), both free and below the kernel's ephemeral
    range (from 32768 by default), so that no outgoing connection takes one before the broker binds it."""
    while True:
        port = random.randrange(20_000, 32_000, 2)
        if all(_bindable(p) for p in (port, port + 1)):
            return port


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.fixture(scope="module")
def cluster(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafkaCluster]:
    root = tmp_path_factory.mktemp("cluster")
    nodes = LocalKafkaCluster(LocalKafka.from_settings(stack), root, [_port_pair() for _ in range(3)])
    try:
        nodes.start_all()
        yield nodes
    finally:
        nodes.kill_all()


async def brokers_in(settings: Settings) -> set[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers, request_timeout_ms=10_000)
    await admin.start()
    try:
        return {int(b["node_id"]) for b in (await admin.describe_cluster())["brokers"]}
    finally:
        await admin.close()


async def isr_of(settings: Settings, topics: list[str]) -> dict[tuple[str, int], set[int]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers, request_timeout_ms=10_000)
    await admin.start()
    try:
        return {
            (t["topic"], int(p["partition"])): set(p["isr"])
            for t in await admin.describe_topics(topics)
            for p in t["partitions"]
        }
    finally:
        await admin.close()


@pytest_asyncio.fixture
async def env(stack: Settings, cluster: LocalKafkaCluster, tmp_path: Path) -> AsyncIterator[Settings]:
    """This test's deployment on the three-broker cluster, with the defaults' replication."""
    settings = isolated_settings(stack, tmp_path).with_overrides(
        kafka_bootstrap_servers=cluster.bootstrap_servers,
        topic_replication_factor=THREE_BROKERS.factor,
        topic_min_insync_replicas=THREE_BROKERS.min_insync,
    )

    async def three() -> bool:
        return await brokers_in(settings) == {1, 2, 3}

    await eventually(three, timeout=60, what="three brokers registered")
    await ensure_topics(settings.kafka, deployment_specs(settings))
    yield settings
    await delete_topics_of(settings.kafka, settings.app_id, settings.topic_prefix)


async def test_the_topics_get_three_replicas_and_the_check_refuses_what_cannot_hold(env: Settings) -> None:
    specs = deployment_specs(env)
    partitions = sum(s.partitions for s in specs)
    isr: dict[tuple[str, int], set[int]] = {}

    async def described() -> bool:  # a new topic reaches every broker's metadata a moment after creation
        nonlocal isr
        isr = await isr_of(env, [s.name for s in specs])
        return len(isr) == partitions and all(replicas == {1, 2, 3} for replicas in isr.values())

    await eventually(described, timeout=30, what=f"{partitions} partitions, each in sync on brokers 1-3")
    await check_replication(env.kafka, specs)  # holds
    with pytest.raises(ReplicationMismatch, match="needs 4 brokers, the cluster has 3"):
        await check_replication(env.kafka, deployment_specs(env.with_overrides(topic_replication_factor=4)))


async def test_a_broker_killed_with_its_disk_lost_loses_no_event(
    env: Settings, cluster: LocalKafkaCluster, start_worker: StartWorker
) -> None:
    w = build(f"rf3-{uuid.uuid4().hex[:6]}", events=3000)
    worker = start_worker()
    worker.wait_ready(120)
    await send_anchors(env, w)
    lost = cluster.node(3)

    async def chaos() -> None:
        await asyncio.sleep(2)
        await asyncio.to_thread(cluster.kill, lost)
        await asyncio.to_thread(cluster.lose_disk, lost)
        await asyncio.sleep(6)  # the stream goes on against brokers 1 and 2
        await asyncio.to_thread(cluster.start, lost)  # a new, empty disk with the cluster's id

    # a producer that re-sends what it could not confirm (its leader died): duplicates, never losses
    await during(stream_slowly(env, w, seconds=12, retry=True), chaos)
    await assert_matches_oracle(env, w, timeout=240, exact_ledger=False)

    topics = [s.name for s in deployment_specs(env)]

    async def copied_back() -> bool:
        return all(3 in isr for isr in (await isr_of(env, topics)).values())

    await eventually(copied_back, timeout=120, what="broker 3 back in every partition's ISR")
    worker.wait_ready(5)
