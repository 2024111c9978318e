"""How a stage reads its topics: its consumer, batches that may fill for a moment, their commit.

aiokafka's ``getmany`` returns as soon as anything has arrived, so a stage that keeps up handles
many small batches, and each costs it (and whatever it writes to) a fixed price: a transaction, a
produce request, a keyed message the meter reads one by one. Waiting a little for more is cheaper.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import CommitFailedError, IllegalStateError

from stripemeter.adapters.kafka.client_auth import client_kwargs
from stripemeter.adapters.kafka.fetch_wait import FETCH_MAX_WAIT_MS
from stripemeter.domain.kafka_access import KafkaAccess

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConsumerSettings:
    """What a stage reads and how. Offsets are never committed automatically: the stage commits a
    batch once it is handled; a partition the group never committed is read from its start."""

    topics: tuple[str, ...]
    group_id: str | None  # None: no group, nothing committed (a benchmark reading a topic whole)
    max_records: int  # records in one batch at most: the stage's work in flight
    linger_seconds: float = 0.0  # a batch waits this long after its first record to fill (gather)
    linger_when_idle: bool = False  # linger from the first batch on, not only under load (linger_now)
    poll_ms: int = 200  # an empty poll returns after this long, so the loop sees stop and its hooks
    fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS
    max_partition_fetch_bytes: int = 1024 * 1024  # aiokafka's defaults
    fetch_max_bytes: int = 50 * 1024 * 1024
    read_committed: bool = False  # skip the records of aborted transactions (and wait for open ones)


def new_consumer(kafka: KafkaAccess, settings: ConsumerSettings) -> AIOKafkaConsumer:
    """The consumer a stage reads with, not subscribed yet."""
    return AIOKafkaConsumer(
        **client_kwargs(kafka),
        group_id=settings.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        max_partition_fetch_bytes=settings.max_partition_fetch_bytes,
        fetch_max_bytes=settings.fetch_max_bytes,
        isolation_level="read_committed" if settings.read_committed else "read_uncommitted",
    )


async def gather(
    consumer: AIOKafkaConsumer,
    max_records: int,
    linger_seconds: float,
    stopping: asyncio.Event,
    poll_ms: int = 200,
) -> dict[Any, list[Any]]:
    """What arrives within ``linger_seconds`` of the first record, up to ``max_records``, in order per
    partition; empty after ``poll_ms`` without any."""
    batch: dict[Any, list[Any]] = await consumer.getmany(timeout_ms=poll_ms, max_records=max_records)
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


# A stage with records at every poll for this long is under load: from then on its batches linger.
BUSY_SECONDS = 1.0


def linger_now(linger_seconds: float, busy_seconds: float, when_idle: bool = False) -> float:
    """The linger for the next batch: all of it once the stage has been busy (no poll came back empty)
    for ``BUSY_SECONDS``, none before. Under load batches still fill and stay few; a stage that was
    idle passes a burst on at once (one event, a replay's corrections: two or three batches as they
    arrive) rather than waiting for records that are not coming. A stage that lingers ``when_idle``
    (the Stripe writer) always waits: a burst becomes one batch, and it goes on after the stages
    someone is waiting for (the sink writing a replay's counters) have taken theirs."""
    return linger_seconds if when_idle or busy_seconds >= BUSY_SECONDS else 0.0


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
