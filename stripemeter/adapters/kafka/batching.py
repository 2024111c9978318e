"""Batches that may fill for a moment before they are handled: fewer, bigger writes downstream.

aiokafka's ``getmany`` returns as soon as anything has arrived, so a stage that keeps up handles
many small batches, and each costs it (and whatever it writes to) a fixed price: a transaction, a
produce request, a keyed message the meter reads one by one. Waiting a little for more is cheaper.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import CommitFailedError, IllegalStateError

log = logging.getLogger(__name__)


async def gather(
    consumer: AIOKafkaConsumer, max_records: int, linger_seconds: float, stopping: asyncio.Event
) -> dict[Any, list[Any]]:
    """What arrives within ``linger_seconds`` of the first record, up to ``max_records``, in order per
    partition; empty after 200 ms without any."""
    batch: dict[Any, list[Any]] = await consumer.getmany(timeout_ms=200, max_records=max_records)
    count = sum(map(len, batch.values()))
    deadline = time.monotonic() + linger_seconds
    while batch and count < max_records and not stopping.is_set():
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        if remaining_ms <= 0:
            break
        more = await consumer.getmany(timeout_ms=remaining_ms, max_records=max_records - count)
        for tp, msgs in more.items():
            batch.setdefault(tp, []).extend(msgs)
            count += len(msgs)
    return batch


async def commit_handled(consumer: AIOKafkaConsumer, batch: dict[Any, list[Any]]) -> None:
    """Commit the batch's offsets of the partitions this consumer still holds.

    A rebalance can take a partition away between ``getmany`` and the commit (a worker joined or
    left); committing it then raises, and it once stopped a worker that had done nothing wrong. The
    new owner reads those records again, and every stage's writes are idempotent, so leaving them
    uncommitted is what at-least-once asks for.
    """
    held = consumer.assignment()
    offsets = {tp: msgs[-1].offset + 1 for tp, msgs in batch.items() if tp in held}
    if len(offsets) < len(batch):
        log.info("not committing %d partition(s) given away by a rebalance", len(batch) - len(offsets))
    if not offsets:
        return
    try:
        await consumer.commit(offsets)
    except (CommitFailedError, IllegalStateError) as exc:  # the group moved on meanwhile
        log.info("commit left to the partitions' new owner after a rebalance: %s", exc)
