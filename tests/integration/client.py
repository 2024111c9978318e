"""Small helpers tests use to feed the pipeline and wait for it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from stripemeter.config import Settings
from stripemeter.topics import TopicNames


async def produce(
    settings: Settings, values: list[Any], *, raw: bool = False, key: bytes | None = None
) -> None:
    """Send each value as one message to usage.events (JSON-encoded unless ``raw``)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all",
        max_request_size=32 * 1024 * 1024,
        linger_ms=5,
    )
    await producer.start()
    try:
        topic = TopicNames(settings.topic_prefix, settings.app_id).events
        for value in values:
            await producer.send(topic, value if raw else orjson.dumps(value), key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 60, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.25)
