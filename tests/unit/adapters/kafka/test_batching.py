"""Batches that fill for a moment: what arrives within the linger joins the batch, up to a limit;
the linger applies once a stage has been busy."""

from __future__ import annotations

import asyncio
from typing import Any

from stripemeter.adapters.kafka.batching import BUSY_SECONDS, gather, linger_now


class ScriptedConsumer:
    """Answers getmany with the next scripted batch (then nothing), noting each request's limit."""

    def __init__(self, *batches: dict[str, list[int]]):
        self.batches = list(batches)
        self.asked: list[int] = []

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[str, list[int]]:
        self.asked.append(max_records)
        if self.batches:
            return self.batches.pop(0)
        await asyncio.sleep(timeout_ms / 1000)  # as aiokafka: wait for records until the timeout
        return {}


async def batch_of(consumer: Any, max_records: int = 100) -> dict[str, list[int]]:
    return await gather(consumer, max_records, 0.3, asyncio.Event())


async def test_records_arriving_within_the_linger_join_one_batch() -> None:
    consumer: Any = ScriptedConsumer({"a": [1, 2]}, {"b": [7]}, {"a": [3]})
    batch = await batch_of(consumer)
    assert batch == {"a": [1, 2, 3], "b": [7]}  # in order within each partition


async def test_a_batch_stops_growing_at_its_size_limit() -> None:
    consumer: Any = ScriptedConsumer({"a": [1, 2, 3]}, {"a": [4, 5]}, {"a": [6]})
    assert await batch_of(consumer, max_records=5) == {"a": [1, 2, 3, 4, 5]}
    assert consumer.asked == [5, 2]  # never asked for more than fits


async def test_no_records_no_linger() -> None:
    consumer: Any = ScriptedConsumer()
    assert await batch_of(consumer) == {}
    assert consumer.asked == [100]


def test_a_stage_lingers_only_once_it_has_been_busy() -> None:
    assert linger_now(0.5, busy_seconds=0.0) == 0.0  # a burst after a quiet moment goes on at once
    assert linger_now(0.5, busy_seconds=BUSY_SECONDS - 0.01) == 0.0  # its second batch too
    assert linger_now(0.5, busy_seconds=BUSY_SECONDS) == 0.5  # under load batches fill as before
    assert linger_now(0.0, busy_seconds=9.0) == 0.0


def test_a_stage_that_lingers_when_idle_waits_for_its_first_batch_too() -> None:
    assert linger_now(0.3, busy_seconds=0.0, when_idle=True) == 0.3
    assert linger_now(0.3, busy_seconds=BUSY_SECONDS, when_idle=True) == 0.3
