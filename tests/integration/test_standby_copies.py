"""A standby copy holds exactly what its persisted offset says, however often its reader is stopped.

StandbyCopies (stripemeter/adapters/kafka/standby_copies.py) follows a changelog partition into a
RocksDB store. Records arrive while the reader is stopped and started again, as rebalances do; after
``stop`` nothing is written, and at the end the store holds the last value of every key (tombstones
deleted) and the changelog's last offset as its persisted offset.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiokafka import AIOKafkaProducer
from faust.types import TP

from stripemeter.adapters.kafka.changelog_state import send_records
from stripemeter.adapters.kafka.client_auth import client_kwargs
from stripemeter.adapters.kafka.standby_copies import StandbyCopies
from stripemeter.domain.config import Settings
from stripemeter.schemas.topics import TopicNames
from tests.faust_store import OFFSET_KEY, Store
from tests.integration.client import eventually


def contents(store: Store) -> dict[bytes, bytes]:
    return {bytes(k): bytes(v) for k, v in store.db.items() if k != OFFSET_KEY}  # type: ignore[arg-type]


async def test_a_standby_copy_is_exact_across_stops(env: Settings, tmp_path: Path) -> None:
    topic = TopicNames(prefix=env.topic_prefix, app_id=env.app_id).changelog("dedupe")
    tp = TP(topic, 0)
    store = Store(tmp_path / "copy")
    copies = StandbyCopies(env.kafka, read_committed=False)
    producer = AIOKafkaProducer(**client_kwargs(env.kafka), acks="all")
    await producer.start()
    expected: dict[bytes, bytes] = {}
    last_offset = -1
    try:
        for round_ in range(6):
            records: list[tuple[bytes | None, bytes | None]] = []
            for i in range(2000):
                key = f"k{(round_ * 2000 + i) % 3000}".encode()  # keys written again in later rounds
                value = None if i % 7 == 0 else f"v{round_}-{i}".encode()  # some tombstones
                records.append((key, value))
                if value is None:
                    expected.pop(key, None)
                else:
                    expected[key] = value
            sent = await send_records(producer, topic, 0, records)
            await asyncio.gather(*(future for future, _ in sent))
            last_future, count = sent[-1]
            last_offset = last_future.result().offset + count - 1
            if round_ % 2 == 0:
                copies.start({tp: store})
                await asyncio.sleep(0.05 * round_)  # stopped after a part, all or none of the round
            copies.stop()
            held = store.persisted_offset(tp)
            await asyncio.sleep(1.5)
            assert store.persisted_offset(tp) == held, "written after stop"
        copies.start({tp: store})

        async def caught_up() -> bool:
            return store.persisted_offset(tp) == last_offset

        await eventually(caught_up, timeout=60, what="the copy at the changelog's end")
    finally:
        await copies.close()
        await producer.stop()
    assert contents(store) == expected
