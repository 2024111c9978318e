"""The worker's Faust consumer (stripemeter/adapters/kafka/fetch_wait.py): the short fetch wait, the
strict commit, and the seek of every partition to where it starts after an assignment."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiokafka import TopicPartition
from faust.transport.consumer import ThreadDelegateConsumer
from faust.types import TP

from stripemeter.adapters.kafka import fetch_wait
from stripemeter.adapters.kafka.fetch_wait import _seek_to_start
from stripemeter.domain.config import Settings
from stripemeter.streams.worker_app import create_app


async def test_the_meter_consumer_waits_at_most_fetch_max_wait_ms(tmp_path: Path) -> None:
    app = create_app(Settings(state_dir=tmp_path))
    assert isinstance(app.transport, fetch_wait.Transport)
    assert isinstance(app.consumer, ThreadDelegateConsumer)
    assert isinstance(app.consumer._thread, fetch_wait._ConsumerThread)
    consumer = app.consumer._thread._create_worker_consumer(app.transport)  # built, not started
    try:
        assert consumer._fetch_max_wait_ms == fetch_wait.FETCH_MAX_WAIT_MS == 100
    finally:
        await consumer.stop()  # closes it without having connected: no unclosed-consumer warning


async def test_no_commit_passes_a_message_never_acknowledged(tmp_path: Path) -> None:
    """Offset 100 committed (the next to read); 101 and 102 acknowledged, 100 not: Faust alone would
    commit 103 and 100 would never be read again."""
    app = create_app(Settings(state_dir=tmp_path))
    consumer = app.consumer
    assert isinstance(consumer, fetch_wait._Consumer)
    tp = TP("events-keyed", 1)
    consumer._committed_offset[tp] = 100
    consumer._acked[tp] = [101, 102]
    consumer._acked_index[tp] = {101, 102}
    assert consumer._new_offset(tp) is None
    consumer._acked[tp] = [100, 101, 102]  # once 100 is acknowledged, the run from it commits
    consumer._acked_index[tp] = {100, 101, 102}
    assert consumer._new_offset(tp) == 103


KEYED = "events-keyed"
CHANGELOG = "app-dedupe-changelog"


class FakeConsumer:
    """The calls ``_seek_to_start`` makes of aiokafka's consumer, recorded in order."""

    def __init__(self, committed: dict[TopicPartition, int | None]):
        self._committed = committed
        self.calls: list[tuple[str, object]] = []

    def assignment(self) -> set[TopicPartition]:
        return set(self._committed)

    async def committed(self, tp: TopicPartition) -> int | None:
        return self._committed[tp]

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        self.calls.append(("beginning", set(tps)))
        await asyncio.sleep(0)  # a round trip to the broker: the committed seeks must not precede it

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.calls.append(("seek", (tp, offset)))


async def test_partitions_never_committed_go_to_their_beginning_before_the_committed_ones_are_sought() -> (
    None
):
    committed = {
        TopicPartition(KEYED, 0): 120,
        TopicPartition(KEYED, 1): None,  # never committed
        TopicPartition(KEYED, 2): 0,  # committed at its start: aiokafka's own seek skips it too
        TopicPartition(CHANGELOG, 1): None,  # restored by the recovery, left where it is
    }
    consumer = FakeConsumer(committed)
    assert await _seek_to_start(consumer, {CHANGELOG}) == committed
    assert consumer.calls == [
        ("beginning", {TopicPartition(KEYED, 1), TopicPartition(KEYED, 2)}),
        ("seek", (TopicPartition(KEYED, 0), 120)),
    ]


async def test_with_every_partition_committed_it_seeks_as_aiokafka_does() -> None:
    consumer = FakeConsumer({TopicPartition(KEYED, 0): 5, TopicPartition(KEYED, 1): 9})
    await _seek_to_start(consumer, set())
    assert sorted(consumer.calls, key=str) == [
        ("seek", (TopicPartition(KEYED, 0), 5)),
        ("seek", (TopicPartition(KEYED, 1), 9)),
    ]
