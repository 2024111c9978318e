"""Control messages to the meter: corrections into their counters' keyed partitions, and mapping
changes into every keyed partition."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer

from stripemeter.schemas.corrections import (
    CONTROL_LIMIT,
    Correction,
    by_partition,
    control_message,
    encode_correction,
)
from stripemeter.schemas.packing import chunk_lengths
from stripemeter.schemas.policy_updates import PolicyUpdate, encode_policy_update


@dataclass(frozen=True)
class Sent:
    """Where a correction's control message landed: the counter shows it once it has applied that
    keyed offset (see usage.deltas' ``keyedOffset``)."""

    correction: Correction
    partition: int
    offset: int


async def send_corrections(
    producer: AIOKafkaProducer,
    keyed_topic: str,
    corrections: list[Correction],
    progress: Callable[[int, int], None] | None = None,
) -> list[Sent]:
    """Every correction into its counter's keyed partition; returns once the broker has them all."""
    partitions = len(await producer.partitions_for(keyed_topic))
    messages: list[tuple[int, list[Correction], bytes]] = []
    for partition, routed in by_partition(corrections, partitions).items():
        encoded = [encode_correction(c) for c in routed]
        start = 0
        for length in chunk_lengths([len(e) for e in encoded], CONTROL_LIMIT):
            array = b"[" + b",".join(encoded[start : start + length]) + b"]"
            messages.append((partition, routed[start : start + length], control_message(array)))
            start += length
    sent = []
    for done, (partition, _chunk, value) in enumerate(messages, start=1):
        sent.append(await producer.send(keyed_topic, value, partition=partition))
        if progress is not None:
            progress(done, len(messages))
    written = await asyncio.gather(*sent)
    return [
        Sent(c, meta.partition, meta.offset)
        for (_partition, chunk, _value), meta in zip(messages, written, strict=True)
        for c in chunk
    ]


async def send_policy_update(producer: AIOKafkaProducer, keyed_topic: str, update: PolicyUpdate) -> int:
    """A mapping change into every keyed partition; returns once the broker has it in all of them (then
    every event that reaches Kafka later is counted under it). Returns how many partitions."""
    partitions = sorted(await producer.partitions_for(keyed_topic))
    value = encode_policy_update(update)
    sent = [await producer.send(keyed_topic, value, partition=partition) for partition in partitions]
    await asyncio.gather(*sent)
    return len(partitions)
