"""The loop every plain-aiokafka stage runs: gather a batch, handle it, commit it; again until stopped.

Intake, the PostgreSQL sink, the Stripe writer and the benchmark's readers each supply a ``handle``
(and the hooks they need); this module owns the consumer and the order that makes them safe:

- a batch's offsets are committed only after ``handle`` returned; a ``handle`` that raises ends the
  run with nothing of its batch committed, so the next owner of those partitions reads it again
  (every stage's writes are idempotent downstream);
- a batch waits ``linger_seconds`` to fill only once the stage has been busy (no empty poll) for a
  moment: a quiet stage passes a burst on at once (batching.linger_now); a stage set to
  ``linger_when_idle`` (the Stripe writer) always waits;
- one batch is in flight at a time, at most ``max_records`` records: nothing more is fetched while
  one is handled, so a slow downstream slows the reading instead of piling records up in memory;
- ``stop`` lets the batch being handled finish and be committed, then leaves the group.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from stripemeter.adapters.kafka import batching
from stripemeter.adapters.kafka.batching import ConsumerSettings
from stripemeter.domain.kafka_access import KafkaAccess

log = logging.getLogger(__name__)

Batch = dict[TopicPartition, list[Any]]  # records in order per partition
Handle = Callable[[Batch], Awaitable[None]]


class StageHooks:
    """What a stage may do besides handling batches; each hook does nothing unless a stage overrides it.

    The consumer swallows what ``assigned`` and ``revoked`` raise (they run inside its rebalance), so
    a stage that must not lose their work keeps it pending and retries it in ``between_batches``.
    """

    async def started(self, consumer: AIOKafkaConsumer) -> None:
        """After the consumer started, before the first batch."""

    async def between_batches(self, consumer: AIOKafkaConsumer) -> None:
        """After each batch is committed, and after each gather that found nothing (so at least every
        ``poll_ms``); it may stop the run. Not after the stage was told to stop."""

    async def assigned(self, consumer: AIOKafkaConsumer, partitions: set[TopicPartition]) -> None:
        """Partitions given to this consumer, before any record of them is fetched."""

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        """Partitions taken away; their handled batches are committed already."""


NO_HOOKS = StageHooks()


class ConsumerStage:
    """One consumer reading ``settings.topics`` in batches for one ``handle``, until ``stop``."""

    def __init__(
        self,
        kafka: KafkaAccess,
        settings: ConsumerSettings,
        consumer_factory: Callable[[KafkaAccess, ConsumerSettings], AIOKafkaConsumer] = batching.new_consumer,
    ):
        self.kafka = kafka
        self.settings = settings
        self.consumer_factory = consumer_factory
        self._stopping = asyncio.Event()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self, handle: Handle, hooks: StageHooks = NO_HOOKS) -> None:
        settings = self.settings
        consumer = self.consumer_factory(self.kafka, settings)
        consumer.subscribe(list(settings.topics), listener=_Listener(consumer, hooks))
        await consumer.start()
        try:
            await hooks.started(consumer)
            idle_at = time.monotonic()  # when a gather last found nothing
            while not self._stopping.is_set():
                busy = time.monotonic() - idle_at
                linger = batching.linger_now(settings.linger_seconds, busy, settings.linger_when_idle)
                batch = await batching.gather(
                    consumer, settings.max_records, linger, self._stopping, settings.poll_ms
                )
                if batch:
                    await handle(batch)
                    if settings.group_id is not None:
                        await batching.commit_handled(consumer, batch)
                else:
                    idle_at = time.monotonic()
                if not self._stopping.is_set():
                    await hooks.between_batches(consumer)
        finally:
            await consumer.stop()


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped: its classes are Any
    def __init__(self, consumer: AIOKafkaConsumer, hooks: StageHooks):
        self.consumer = consumer
        self.hooks = hooks

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.hooks.revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.hooks.assigned(self.consumer, set(assigned))
