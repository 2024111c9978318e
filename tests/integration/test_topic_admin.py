"""Topic administration on the real broker: incremental config changes, refusals that are errors, and
replication settings the cluster cannot hold stopping `topics create` and the worker with a reason."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from stripemeter.adapters.kafka.admin import (
    ReplicationMismatch,
    TopicConfigRefused,
    describe_configs,
    ensure_topics,
)
from stripemeter.adapters.kafka.incremental_configs import set_topic_configs
from stripemeter.domain.config import Settings, settings_env
from stripemeter.schemas.topics import DAY_MS, THREE_BROKERS, TopicSpec, deployment_specs
from tests.integration.client import eventually


async def configs_of(env: Settings, topic: str) -> dict[str, str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=env.kafka_bootstrap_servers)
    await admin.start()
    try:
        return (await describe_configs(admin, [topic]))[topic]
    finally:
        await admin.close()


async def test_a_spec_change_sets_only_its_keys_and_a_refusal_is_an_error(env: Settings) -> None:
    spec = TopicSpec(f"{env.topic_prefix}admin", 1, DAY_MS, "delete")
    assert (await ensure_topics(env.kafka, [spec])).created == [spec.name]
    # an operator's own key, which the old whole-config AlterConfigs reset to the broker's default
    admin = AIOKafkaAdminClient(bootstrap_servers=env.kafka_bootstrap_servers)
    await admin.start()
    try:
        assert await set_topic_configs(admin, {spec.name: {"segment.ms": "3600000"}}) == {}
    finally:
        await admin.close()

    async def operator_key() -> bool:
        return (await configs_of(env, spec.name)).get("segment.ms") == "3600000"

    await eventually(operator_key, timeout=10, what="the operator's segment.ms")

    longer = replace(spec, retention_ms=2 * DAY_MS)
    result = await ensure_topics(env.kafka, [longer])
    assert result.reconfigured == [spec.name]

    async def applied() -> bool:  # the broker applies a change a moment after it answers
        return (await configs_of(env, spec.name))["retention.ms"] == str(2 * DAY_MS)

    await eventually(applied, timeout=10, what="the new retention")
    assert (await configs_of(env, spec.name))["segment.ms"] == "3600000"  # left alone
    assert (await ensure_topics(env.kafka, [longer])).reconfigured == []  # nothing differs: nothing sent

    with pytest.raises(TopicConfigRefused, match=rf"{spec.name} \(cleanup.policy\)"):
        await ensure_topics(env.kafka, [replace(longer, cleanup_policy="shred")])
    assert (await configs_of(env, spec.name))["cleanup.policy"] == "delete"


async def test_replication_the_single_broker_cannot_hold_stops_topics_create_and_the_worker(
    env: Settings, tmp_path: Path
) -> None:
    three = env.with_overrides(
        topic_replication_factor=THREE_BROKERS.factor, topic_min_insync_replicas=THREE_BROKERS.min_insync
    )
    with pytest.raises(ReplicationMismatch, match="needs 3 brokers, the cluster has 1"):
        await ensure_topics(three.kafka, deployment_specs(three))

    for command in (["topics", "create"], ["worker"]):
        done = subprocess.run(
            [sys.executable, "-m", "stripemeter", *command],
            env={**settings_env(three.with_overrides(state_dir=tmp_path / "state"))},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 1, done.stderr[-2000:]
        assert "needs 3 brokers, the cluster has 1" in done.stderr, done.stderr[-2000:]
        assert "STRIPEMETER_TOPIC_REPLICATION_FACTOR" in done.stderr
