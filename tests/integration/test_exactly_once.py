"""Exactly once under faults: kill -9, rebalances and a broker restart, checked against an oracle.

Every test streams events with duplicates, late events within the window and too-late ones, while
something goes wrong, then compares every counter the pipeline published (the PostgreSQL snapshot
of usage.deltas) and the ledger's outcome counts with what the oracle says.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import uuid
from collections.abc import Awaitable, Callable

import pytest

from stripemeter.adapters.kafka import lag
from stripemeter.domain.config import Settings
from stripemeter.schemas.topics import TopicNames
from stripemeter.tools.local.procs import Managed
from stripemeter.tools.local.stack import start_kafka
from tests.integration.client import counters_of, eventually, outcomes_of, produce
from tests.integration.harness import StartWorker, WorkerProcess, alive
from tests.integration.workload import Workload, build, chunks, round_seed

pytestmark = pytest.mark.exactly_once  # never rerun by CI; repeated by ./dev soak


async def stream_slowly(
    env: Settings, w: Workload, seconds: float, seed: int = 1, retry: bool = False
) -> None:
    messages = chunks(w.stream, random.Random(round_seed(seed)))
    per_step = max(1, len(messages) // int(seconds * 5))
    for start in range(0, len(messages), per_step):
        while True:
            try:
                await asyncio.wait_for(produce(env, messages[start : start + per_step]), 20)
                break
            except Exception:
                if not retry:
                    raise
                await asyncio.sleep(1)
        await asyncio.sleep(0.2)


async def send_anchors(env: Settings, w: Workload) -> None:
    await produce(env, [w.anchors])
    anchors = len(w.anchors)

    async def anchored() -> bool:
        return (await outcomes_of(env, w.tenant)).get("counted", 0) >= anchors

    await eventually(anchored, timeout=90, what="anchor events in the ledger")


async def behind(env: Settings) -> list[str]:
    """Each consumer group's partitions that have not consumed their topic's end."""
    names = TopicNames(env.topic_prefix, env.app_id)
    lags = await lag.measure(env.kafka, names)
    return [f"{x.group} {x.topic}[{x.partition}] {x.messages} behind" for x in lags if x.messages]


async def assert_matches_oracle(
    env: Settings, w: Workload, timeout: float = 150, exact_ledger: bool = True
) -> None:
    async def converged() -> bool:
        return await counters_of(env, w.tenant) == w.expected_micros

    try:
        await eventually(converged, timeout=timeout, what="counters equal to the oracle")
    finally:
        got = await counters_of(env, w.tenant)
        wrong = {k: (got.get(k), v) for k, v in w.expected_micros.items() if got.get(k) != v}
        extra = {k: v for k, v in got.items() if k not in w.expected_micros}
        assert not wrong and not extra, (
            f"{len(wrong)} counters differ (got, want): {list(wrong.items())[:5]}\n"
            f"consumer groups behind (which stage stopped): {await behind(env)}"
        )

    async def ledger_complete() -> bool:
        got = await outcomes_of(env, w.tenant)
        if exact_ledger:
            return got == dict(w.outcomes)
        # re-sent messages add duplicate (or late) rows, never counted ones
        return got.get("counted") == w.outcomes["counted"] and got.get("late", 0) >= w.outcomes["late"]

    await eventually(ledger_complete, timeout=60, what=f"ledger outcomes {dict(w.outcomes)}")


async def during(stream: Awaitable[None], chaos: Callable[[], Awaitable[None]]) -> None:
    task = asyncio.ensure_future(stream)
    await chaos()
    await task


async def test_kill_9_at_random_moments(env: Settings, start_worker: StartWorker) -> None:
    w = build(f"k9-{uuid.uuid4().hex[:6]}", events=6000)
    worker: WorkerProcess = start_worker("w0", slot="main")
    worker.wait_ready()
    await send_anchors(env, w)
    rng = random.Random(round_seed(42))
    kills = 0

    async def chaos() -> None:
        nonlocal worker, kills
        for n in range(3):
            await asyncio.sleep(rng.uniform(1.5, 4.0))
            worker.kill9()
            kills += 1
            worker = start_worker(f"w{n + 1}", slot="main")
        await asyncio.to_thread(worker.wait_ready, 120)

    await during(stream_slowly(env, w, seconds=15), chaos)
    assert kills == 3
    await assert_matches_oracle(env, w)


async def test_kill_9_of_the_workers_stage_processes(env: Settings, start_worker: StartWorker) -> None:
    """The worker restarts a killed intake or sink child; the counters still match the oracle. A
    worker killed on its own takes its children with it."""
    w = build(f"kc-{uuid.uuid4().hex[:6]}", events=5000)
    worker: WorkerProcess = start_worker(args=("--stage-processes",))
    worker.wait_ready()
    await send_anchors(env, w)
    rng = random.Random(round_seed(7))

    async def chaos() -> None:
        for stage in ("intake", "sink", "intake"):
            await asyncio.sleep(rng.uniform(1.0, 3.0))
            killed = worker.children()[stage]
            os.kill(killed, signal.SIGKILL)

            async def replaced(stage: str = stage, killed: int = killed) -> bool:
                return worker.children().get(stage, killed) != killed

            await eventually(replaced, timeout=30, what=f"a new {stage} process")

    await during(stream_slowly(env, w, seconds=12), chaos)
    await assert_matches_oracle(env, w)
    scrape = worker.scrape()
    assert 'stripemeter_worker_stage_restarts_total{stage="intake"} 2.0' in scrape
    assert 'stripemeter_worker_stage_restarts_total{stage="sink"} 1.0' in scrape
    assert 'stripemeter_intake_messages_total{stage="intake"}' in scrape  # the child's own metrics

    children = worker.children().values()
    assert worker.proc is not None
    os.kill(worker.proc.pid, signal.SIGKILL)  # the worker alone, not its process group
    worker.proc.wait(10)

    async def children_gone() -> bool:
        return not any(alive(pid) for pid in children)

    await eventually(children_gone, timeout=30, what="the stage processes to stop after their worker")


async def test_two_workers_and_a_rebalance_mid_stream(env: Settings, start_worker: StartWorker) -> None:
    w = build(f"rb-{uuid.uuid4().hex[:6]}", events=5000)
    first = start_worker("a")
    first.wait_ready()
    await send_anchors(env, w)

    async def chaos() -> None:
        await asyncio.sleep(2)
        # joins: partitions move to it mid-stream; it runs intake and the sink as child processes,
        # the first one inside: a fleet may mix both
        second = start_worker("b", args=("--stage-processes",))
        await asyncio.sleep(6)
        first.stop()  # leaves gracefully: everything moves to the second
        await asyncio.to_thread(second.wait_ready, 120)

    await during(stream_slowly(env, w, seconds=12), chaos)
    await assert_matches_oracle(env, w)


async def test_broker_restart_mid_stream(stack: Settings, env: Settings, start_worker: StartWorker) -> None:
    broker = Managed("kafka", stack.state_dir / "run", stack.state_dir / "logs")
    if broker.pid() is None:
        pytest.skip("the broker was not started by this stack (reused), so the test cannot restart it")
    w = build(f"br-{uuid.uuid4().hex[:6]}", events=3000)
    worker = start_worker()
    worker.wait_ready()
    await send_anchors(env, w)

    async def chaos() -> None:
        await asyncio.sleep(2)
        await asyncio.to_thread(broker.stop, 60)
        await asyncio.sleep(3)
        await asyncio.to_thread(start_kafka, stack, lambda message: None)

    # A producer that re-sends what it could not confirm: duplicates for whatever did get through.
    await during(stream_slowly(env, w, seconds=8, retry=True), chaos)
    await assert_matches_oracle(env, w, timeout=240, exact_ledger=False)
