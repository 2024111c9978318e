"""Reading a table's changelog with a plain aiokafka consumer and writing it to the partition's RocksDB
in batches, as Faust's ``apply_changelog_batch`` does (raw key; a value is put, a tombstone deletes;
the last record of a key wins), each batch together with the store's new persisted offset.

Used by the bulk restore of active partitions and by the standby copies.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer
from faust.types import TP
from rocksdict import WriteBatch

from stripemeter.adapters.kafka.client_auth import client_kwargs
from stripemeter.domain.kafka_access import KafkaAccess

log = logging.getLogger(__name__)

FETCH_BYTES = 32 * 1024 * 1024  # one partition's fetch: about 250,000 dedupe records


def changelog_consumer(
    kafka: KafkaAccess, read_committed: bool, fetch_bytes: int = FETCH_BYTES
) -> AIOKafkaConsumer:
    """A consumer outside any group, for partitions assigned and positioned by the caller; each fetch
    brings up to ``fetch_bytes`` of a partition."""
    return AIOKafkaConsumer(
        **client_kwargs(kafka),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=fetch_bytes,
        fetch_max_bytes=fetch_bytes * 2,
        isolation_level="read_committed" if read_committed else "read_uncommitted",
    )


async def stop_quietly(consumer: AIOKafkaConsumer) -> None:
    """Stop the consumer. aiokafka's stop can raise the CancelledError of one of its own tasks (seen
    with the broker away); that must not end the caller's task, unless it is being cancelled."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.warning("the changelog consumer's stop was cancelled inside aiokafka")


def apply_records(store: Any, tp: TP, records: Iterable[Any], persisted: int) -> int:
    """Write the records up to offset ``persisted`` and that persisted offset to the partition's
    RocksDB in one batch; returns how many records were written."""
    batch = WriteBatch(raw_mode=True)
    count = 0
    for record in records:
        if record.offset > persisted:
            break  # past the end offset the caller gave: read by someone else (Faust's recovery)
        if record.value is None:
            batch.delete(record.key)
        else:
            batch.put(record.key, record.value)
        count += 1
    batch.put(store.offset_key, str(persisted).encode())
    store._db_for_partition(tp.partition).write(batch)
    return count
