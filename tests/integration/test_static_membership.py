"""Static membership: a worker with a stable group instance id (a StatefulSet pod) that restarts
within the session timeout gets its partitions back, and the other workers see no rebalance."""

from __future__ import annotations

import asyncio
import re
import uuid

import pytest

from stripemeter.domain.config import Settings
from tests.integration.client import eventually
from tests.integration.harness import StartWorker, WorkerProcess
from tests.integration.test_exactly_once import assert_matches_oracle, during, send_anchors, stream_slowly
from tests.integration.workload import build

pytestmark = pytest.mark.exactly_once  # never rerun by CI; repeated by ./dev soak


def revocations(worker: WorkerProcess) -> float:
    found = re.search(r"^stripemeter_worker_revocations_total (\S+)$", worker.scrape(), re.MULTILINE)
    assert found, "the worker exports stripemeter_worker_revocations_total"
    return float(found.group(1))


def assigned(worker: WorkerProcess) -> float:
    found = re.search(r"^stripemeter_worker_assigned_partitions (\S+)$", worker.scrape(), re.MULTILINE)
    assert found
    return float(found.group(1))


async def test_a_pod_killed_and_back_within_the_session_timeout_causes_no_rebalance(
    env: Settings, start_worker: StartWorker
) -> None:
    w = build(f"sm-{uuid.uuid4().hex[:6]}", events=3000)
    first = start_worker("pod-0", group_instance_id=f"{env.app_id}-0")
    first.wait_ready()
    other = start_worker("pod-1", group_instance_id=f"{env.app_id}-1")
    other.wait_ready()
    await send_anchors(env, w)

    async def both_hold_partitions() -> bool:
        return assigned(first) > 0 and assigned(other) > 0

    await eventually(both_hold_partitions, timeout=60, what="partitions on both workers")
    before = revocations(other)
    held = assigned(other)

    async def chaos() -> None:
        nonlocal first
        await asyncio.sleep(2)
        first.kill9()  # the pod dies; StatefulSet starts it again under the same name
        first = start_worker("pod-0b", slot="pod-0", group_instance_id=f"{env.app_id}-0")
        await asyncio.to_thread(first.wait_ready, 120)

    await during(stream_slowly(env, w, seconds=10), chaos)
    await assert_matches_oracle(env, w)
    assert revocations(other) == before, "the other worker's partitions were revoked: a rebalance"
    assert assigned(other) == held
