"""The one consumer loop (streams/consumer_stage.py) with a fake consumer: what it commits, when, and what
it fetches while a batch is handled."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import TopicPartition

from stripemeter.adapters.kafka.batching import ConsumerSettings
from stripemeter.domain.kafka_access import KafkaAccess
from stripemeter.streams.consumer_stage import Batch, ConsumerStage, StageHooks

TP = TopicPartition("t", 0)
WAIT = 5.0


@dataclass(frozen=True)
class Record:
    offset: int


class FakeConsumer:
    """A consumer of one partition holding ``available`` records from offset 0; notes every call."""

    def __init__(self, available: int):
        self.available = available
        self.position = 0
        self.calls: list[str] = []
        self.asked: list[int] = []
        self.committed: list[dict[TopicPartition, int]] = []
        self.listener: Any = None
        self.running = False

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.listener = listener

    async def start(self) -> None:
        self.running = True
        await self.listener.on_partitions_assigned({TP})

    async def stop(self) -> None:
        self.calls.append("stop")
        self.running = False

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Record]]:
        self.calls.append("getmany")
        self.asked.append(max_records)
        count = min(max_records, self.available - self.position)
        if not count:
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        records = [Record(o) for o in range(self.position, self.position + count)]
        self.position += count
        return {TP: records}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.calls.append("commit")
        self.committed.append(dict(offsets))


def stage_over(consumer: FakeConsumer, group_id: str | None = "g", max_records: int = 10) -> ConsumerStage:
    settings = ConsumerSettings(("t",), group_id, max_records=max_records, poll_ms=10)
    return ConsumerStage(KafkaAccess("unused:9092"), settings, consumer_factory=lambda _k, _s: consumer)


async def test_a_batch_is_committed_only_after_its_handle_returned() -> None:
    consumer = FakeConsumer(available=3)
    stage = stage_over(consumer)
    handling, release = asyncio.Event(), asyncio.Event()

    async def handle(batch: Batch) -> None:
        handling.set()
        await release.wait()
        stage.stop()

    run = asyncio.create_task(stage.run(handle))
    await asyncio.wait_for(handling.wait(), WAIT)
    await asyncio.sleep(0.05)  # the loop had every chance to commit early
    assert consumer.committed == []
    release.set()
    await asyncio.wait_for(run, WAIT)
    assert consumer.committed == [{TP: 3}]  # the next offset to read


async def test_a_handle_that_raises_commits_nothing_and_ends_the_run() -> None:
    consumer = FakeConsumer(available=3)
    stage = stage_over(consumer)

    async def handle(batch: Batch) -> None:
        raise RuntimeError("downstream refused")

    with pytest.raises(RuntimeError, match="downstream refused"):
        await asyncio.wait_for(stage.run(handle), WAIT)
    assert consumer.committed == []
    assert not consumer.running  # left the group: the next owner reads the batch again


async def test_stop_lets_the_batch_in_hand_finish_and_be_committed_then_fetches_nothing() -> None:
    consumer = FakeConsumer(available=25)
    stage = stage_over(consumer, max_records=10)
    handled: list[list[int]] = []

    async def handle(batch: Batch) -> None:
        stage.stop()  # a signal arriving mid-batch
        await asyncio.sleep(0.02)
        handled.append([r.offset for r in batch[TP]])

    await asyncio.wait_for(stage.run(handle), WAIT)
    assert handled == [list(range(10))]
    assert consumer.committed == [{TP: 10}]
    assert consumer.calls == ["getmany", "commit", "stop"]


async def test_nothing_is_fetched_while_a_batch_is_handled_and_batches_stay_bounded() -> None:
    consumer = FakeConsumer(available=35)
    stage = stage_over(consumer, max_records=10)
    sizes: list[int] = []

    async def handle(batch: Batch) -> None:
        before = len(consumer.calls)
        await asyncio.sleep(0.01)  # the loop gets the event loop meanwhile
        assert len(consumer.calls) == before  # no getmany while this batch is in hand
        sizes.append(len(batch[TP]))
        if sum(sizes) == 35:
            stage.stop()

    await asyncio.wait_for(stage.run(handle), WAIT)
    assert sizes == [10, 10, 10, 5]
    assert max(consumer.asked) == 10
    assert consumer.calls == ["getmany", "commit"] * 4 + ["stop"]  # strictly gather -> handle -> commit
    assert [c[TP] for c in consumer.committed] == [10, 20, 30, 35]


async def test_without_a_group_nothing_is_committed() -> None:
    consumer = FakeConsumer(available=3)
    stage = stage_over(consumer, group_id=None)

    async def handle(batch: Batch) -> None:
        stage.stop()

    await asyncio.wait_for(stage.run(handle), WAIT)
    assert consumer.committed == []


async def test_hooks_see_the_assignment_and_may_end_the_run_between_batches() -> None:
    consumer = FakeConsumer(available=0)
    stage = stage_over(consumer)

    class Hooks(StageHooks):
        def __init__(self) -> None:
            self.seen: list[str] = []

        async def assigned(self, consumer: Any, partitions: set[TopicPartition]) -> None:
            self.seen.append(f"assigned {sorted(p.partition for p in partitions)}")

        async def started(self, consumer: Any) -> None:
            self.seen.append("started")

        async def between_batches(self, consumer: Any) -> None:
            self.seen.append("between")
            if self.seen.count("between") == 3:
                stage.stop()

    hooks = Hooks()

    async def handle(batch: Batch) -> None:
        raise AssertionError("there is nothing to handle")

    await asyncio.wait_for(stage.run(handle, hooks), WAIT)
    assert hooks.seen == ["assigned [0]", "started", "between", "between", "between"]
    assert consumer.calls == ["getmany", "getmany", "getmany", "stop"]  # stopped by the hook: no 4th fetch


async def test_between_batches_runs_after_the_commit() -> None:
    consumer = FakeConsumer(available=3)
    stage = stage_over(consumer)

    class Hooks(StageHooks):
        async def between_batches(self, consumer: Any) -> None:
            consumer.calls.append("between")
            stage.stop()

    async def handle(batch: Batch) -> None:
        consumer.calls.append("handle")

    await asyncio.wait_for(stage.run(handle, Hooks()), WAIT)
    assert consumer.calls == ["getmany", "handle", "commit", "between", "stop"]


async def test_a_stage_that_was_idle_hands_a_burst_on_without_lingering() -> None:
    """A long linger is for a stage under load; a quiet one (a replay's corrections arriving at the
    sink) handles what it has at once."""
    consumer = FakeConsumer(available=3)
    settings = ConsumerSettings(("t",), "g", max_records=10, linger_seconds=60.0, poll_ms=10)
    stage = ConsumerStage(KafkaAccess("unused:9092"), settings, consumer_factory=lambda _k, _s: consumer)
    handled: list[int] = []

    async def handle(batch: Batch) -> None:
        handled.extend(r.offset for r in batch[TP])
        stage.stop()

    await asyncio.wait_for(stage.run(handle), WAIT)  # a 60 s linger would not be done in time
    assert handled == [0, 1, 2]
