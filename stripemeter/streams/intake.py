"""Intake: usage.events -> validated events re-keyed by (tenant, customer), or dead letters.

A plain aiokafka stage, because Faust's per-message cost (~3,600 messages/s here) is far below what
single-event producers send. It reads big batches, validates each event, and writes one message per
target partition of the keyed topic holding many events.

Order per batch (at-least-once, made exact downstream):
1. produce keyed batches and dead letters, and wait until the broker has them (acks=all);
2. only then commit the consumed offsets.
A crash between 1 and 2 re-sends the same events with the same Source; the counting stage
recognises them by that Source and never counts them twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from functools import partial
from typing import Any

from aiokafka import AIOKafkaProducer

from stripemeter.adapters.kafka.admin import message_limits
from stripemeter.adapters.kafka.batching import ConsumerSettings
from stripemeter.adapters.kafka.client_auth import client_kwargs
from stripemeter.domain import metrics
from stripemeter.domain.clock import SYSTEM, Clock
from stripemeter.domain.kafka_access import KafkaAccess
from stripemeter.schemas.dead_letters import dead_letter
from stripemeter.schemas.events import InvalidEvent, decode_message
from stripemeter.schemas.held_json import dumps_held
from stripemeter.schemas.packing import pack_arrays, payload_limit
from stripemeter.schemas.partitioning import Partitioner, keyed_routing_key
from stripemeter.schemas.records import keyed_item
from stripemeter.schemas.topics import TopicNames
from stripemeter.streams.consumer_stage import Batch, ConsumerStage

log = logging.getLogger(__name__)

FETCH_MAX_BYTES = 32 * 1024 * 1024
# a poll may wait this long to fill (see adapters/kafka/batching.py): at 10,000 single-event messages
# a second the keyed messages then hold ~125 events each instead of a handful, and the meter's work per
# message (Faust's own overhead, a counter and watermark read and write) is shared by more events
LINGER_SECONDS = 0.05


def route(
    records: list[Any], target_of: Partitioner, now_ms: int, item_limit: int
) -> tuple[dict[int, list[bytes]], list[bytes], int]:
    """Pure step: messages -> (encoded keyed items per target partition, dead letters, events read).

    A message whose handling raises (an input no rule foresaw, or a bug) is dead-lettered whole with
    ``processing_failed`` and the batch goes on; nothing of it is routed. A keyed item over
    ``item_limit`` bytes (no valid event is) is dead-lettered ``too_large``.
    """
    keyed: dict[int, list[bytes]] = defaultdict(list)
    dead: list[bytes] = []
    seen = 0
    for msg in records:
        try:
            results = decode_message(msg.value, now_ms)
            routed, rejected = [], []
            for position, result in enumerate(results):
                if isinstance(result, InvalidEvent):
                    rejected.append(dead_letter(result, msg.topic, msg.partition, msg.offset, msg.value))
                    continue
                item = dumps_held(keyed_item(result, msg.partition, msg.offset, position))
                if len(item) > item_limit:
                    error = InvalidEvent("too_large", f"the event is {len(item)} bytes as a keyed record")
                    error.index, error.raw_item = position, None
                    rejected.append(dead_letter(error, msg.topic, msg.partition, msg.offset, msg.value))
                    continue
                routed.append((target_of(keyed_routing_key(result.tenant_id, result.customer_ref)), item))
        except Exception as exc:
            log.exception(
                "dead-lettering %s[%d]@%d: handling it failed", msg.topic, msg.partition, msg.offset
            )
            metrics.POISON_MESSAGES.labels("intake").inc()
            failed = InvalidEvent(
                "processing_failed", f"handling this message failed: {type(exc).__name__}: {exc}"
            )
            dead.append(dead_letter(failed, msg.topic, msg.partition, msg.offset, msg.value))
            seen += 1
            continue
        seen += len(results)
        dead.extend(rejected)
        for target, item in routed:
            keyed[target].append(item)
    return keyed, dead, seen


class Intake:
    """Runs the intake loop until stopped."""

    def __init__(
        self,
        kafka: KafkaAccess,
        names: TopicNames,
        group_id: str,
        poll_records: int = 5000,
        clock: Clock = SYSTEM,
    ):
        self.kafka = kafka
        self.clock = clock
        self.names = names
        self.keyed_limit = payload_limit(4 * 1024 * 1024)  # replaced by the broker's when it runs
        self.stage = ConsumerStage(
            kafka,
            ConsumerSettings(
                (names.events,),
                group_id,
                max_records=poll_records,
                linger_seconds=LINGER_SECONDS,
                max_partition_fetch_bytes=FETCH_MAX_BYTES,
                fetch_max_bytes=FETCH_MAX_BYTES,
                read_committed=True,
            ),
        )

    async def run(self) -> None:
        producer = AIOKafkaProducer(
            **client_kwargs(self.kafka),
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_batch_size=1024 * 1024,
            max_request_size=FETCH_MAX_BYTES,
        )
        await producer.start()
        try:
            keyed_partitions = Partitioner(len(await producer.partitions_for(self.names.keyed)))
            limits = await message_limits(self.kafka, [self.names.keyed])
            self.keyed_limit = payload_limit(limits[self.names.keyed])
            log.info(
                "intake started: %s -> %s (%d partitions, messages up to %d bytes)",
                self.names.events,
                self.names.keyed,
                keyed_partitions.partitions,
                self.keyed_limit,
            )
            await self.stage.run(partial(self._handle, producer, keyed_partitions))
        finally:
            await producer.stop()
            log.info("intake stopped")

    async def _handle(self, producer: AIOKafkaProducer, keyed_partitions: Partitioner, batch: Batch) -> None:
        """Route the batch and wait until the broker has every keyed message and dead letter: the
        stage commits the batch only after this returns."""
        records = [msg for msgs in batch.values() for msg in msgs]
        keyed, dead, seen = route(records, keyed_partitions, self.clock.ms(), self.keyed_limit)
        futures = []
        for partition, items in keyed.items():
            for message in pack_arrays(items, self.keyed_limit):  # by bytes: the keyed topic's limit
                futures.append(await producer.send(self.names.keyed, message, partition=partition))
        for value in dead:
            futures.append(await producer.send(self.names.dlq, value))
        if futures:
            await asyncio.gather(*futures)
        metrics.INTAKE_MESSAGES.inc(len(records))
        if dead:
            metrics.EVENTS.labels("rejected").inc(len(dead))
            log.info("dead-lettered %d of %d events", len(dead), seen)

    def stop(self) -> None:
        self.stage.stop()
