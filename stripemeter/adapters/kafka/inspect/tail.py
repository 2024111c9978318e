"""``topics tail``: read a topic from a chosen start, decode, filter, print; optionally keep following.

A plain consumer with no group id and manually assigned partitions: it commits nothing and never
joins, so it cannot move the pipeline's offsets or trigger a rebalance.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition

from stripemeter.adapters.kafka.client_auth import client_kwargs
from stripemeter.adapters.kafka.inspect.decode import Decoded, decode_key, decode_record
from stripemeter.adapters.kafka.inspect.kinds import Kind
from stripemeter.adapters.kafka.inspect.render import Position, json_line, text_line
from stripemeter.domain.errors import Invalid
from stripemeter.domain.kafka_access import KafkaAccess

# usage.events takes messages up to 16 MiB; a tail must be able to fetch any of them.
FETCH_PARTITION_BYTES = 17 * 1024 * 1024
UNKNOWN_TOPIC = 3


class TopicNotFound(Invalid, LookupError):
    """No topic of that name on the broker: ``field`` is ``topic``, ``topic`` the name asked for."""

    code = "unknown_topic"

    def __init__(self, topic: str) -> None:
        detail = f"no topic {topic!r} on the broker (see `stripemeter topics list`)"
        super().__init__("topic", detail, message=detail)
        self.topic = topic


TailStart = Literal["beginning", "since", "last"]  # where a tail begins reading


@dataclass(frozen=True)
class TailRequest:
    topic: str  # full name on the broker
    shown_as: str  # name printed on each line
    kind: Kind
    start: TailStart = "last"
    since_ms: int | None = None
    last: int = 10  # records per partition, for start="last"
    follow: bool = False
    limit: int | None = None  # stop after this many printed records
    tenant: str | None = None
    metric: str | None = None
    customer: str | None = None
    as_json: bool = False


def matches(request: TailRequest, record: Decoded) -> bool:
    """Every given filter must equal the record's field; records without the field do not match."""
    wanted = (
        (request.tenant, record.tenant),
        (request.metric, record.metric),
        (request.customer, record.customer),
    )
    return all(want is None or want == have for want, have in wanted)


async def _partitions(kafka: KafkaAccess, topic: str) -> list[TopicPartition]:
    admin = AIOKafkaAdminClient(**client_kwargs(kafka), request_timeout_ms=15000)
    await admin.start()
    try:
        (meta,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if meta["error_code"] == UNKNOWN_TOPIC or not meta["partitions"]:
        raise TopicNotFound(topic)
    return sorted(TopicPartition(topic, p["partition"]) for p in meta["partitions"])


async def _seek(consumer: AIOKafkaConsumer, request: TailRequest, tps: list[TopicPartition]) -> None:
    starts = await consumer.beginning_offsets(tps)
    ends = await consumer.end_offsets(tps)
    if request.start == "since":
        assert request.since_ms is not None
        found = await consumer.offsets_for_times({tp: request.since_ms for tp in tps})
        for tp in tps:
            hit = found.get(tp)
            consumer.seek(tp, hit.offset if hit is not None else ends[tp])
    elif request.start == "beginning":
        for tp in tps:
            consumer.seek(tp, starts[tp])
    else:
        for tp in tps:
            consumer.seek(tp, max(starts[tp], ends[tp] - request.last))


async def tail(
    kafka: KafkaAccess, request: TailRequest, write: Callable[[str], None], stop: asyncio.Event | None = None
) -> int:
    """Print matching records; returns how many. Without ``follow`` it ends at the end offsets seen
    at start; with it, at ``limit`` or when ``stop`` is set."""
    tps = await _partitions(kafka, request.topic)
    consumer = AIOKafkaConsumer(
        **client_kwargs(kafka),
        group_id=None,
        enable_auto_commit=False,
        max_partition_fetch_bytes=FETCH_PARTITION_BYTES,
        fetch_max_bytes=FETCH_PARTITION_BYTES * 2,
    )
    await consumer.start()
    printed = 0
    render = json_line if request.as_json else text_line
    try:
        consumer.assign(tps)
        await _seek(consumer, request, tps)
        stop_at = await consumer.end_offsets(tps)
        open_tps = set(tps)
        while open_tps or request.follow:
            if stop is not None and stop.is_set():
                break
            if not request.follow:
                open_tps = {tp for tp in open_tps if await consumer.position(tp) < stop_at[tp]}
                if not open_tps:
                    break
            batch = await consumer.getmany(*open_tps if not request.follow else (), timeout_ms=500)
            for tp in sorted(batch):
                for msg in batch[tp]:
                    if not request.follow and msg.offset >= stop_at[tp]:
                        break
                    position = Position(
                        request.shown_as, tp.partition, msg.offset, msg.timestamp, decode_key(msg.key)
                    )
                    for record in decode_record(request.kind, msg.key, msg.value):
                        if not matches(request, record):
                            continue
                        write(render(position, record))
                        printed += 1
                        if request.limit is not None and printed >= request.limit:
                            return printed
    finally:
        await consumer.stop()
    return printed
