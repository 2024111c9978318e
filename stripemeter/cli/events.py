"""`stripemeter events send`: usage events straight to Kafka, as a producer would write them."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from stripemeter.cli.common import Subcommands, add_command, say
from stripemeter.domain.config import Settings


def message_key(message: Any) -> bytes | None:
    """``tenantId:customerRef`` of the (first) event, as the API keys what it writes; None when the message
    does not say (intake reads any key)."""
    first = message[0] if isinstance(message, list) and message else message
    if isinstance(first, dict) and isinstance(first.get("tenantId"), str):
        return f"{first['tenantId']}:{first.get('customerRef', '')}".encode()
    return None


async def send(settings: Settings, topic: str, messages: list[bytes]) -> None:
    from stripemeter.adapters.kafka.client_auth import client_kwargs

    producer = AIOKafkaProducer(**client_kwargs(settings.kafka), acks="all")
    await producer.start()
    try:
        for raw in messages:
            try:
                key = message_key(orjson.loads(raw))
            except orjson.JSONDecodeError:
                key = None  # sent as it is: intake dead-letters it, as it would anyone's
            await producer.send_and_wait(topic, raw, key=key)
    finally:
        await producer.stop()


def cmd_events_send(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.schemas.topics import TopicNames

    texts = args.message or [line for line in sys.stdin.read().splitlines() if line.strip()]
    topic = TopicNames(settings.topic_prefix, settings.app_id).events
    asyncio.run(send(settings, topic, [text.encode() for text in texts]))
    say(f"sent {len(texts)} message(s) to {topic}; the broker has them (acks=all)")
    return 0


def add_events(sub: Subcommands) -> None:
    """`events send`."""
    events = sub.add_parser("events", help="usage events")
    events_sub = events.add_subparsers(dest="action", metavar="ACTION", required=True)
    send_cmd = add_command(
        events_sub,
        "send",
        cmd_events_send,
        "write usage events to usage.events as a producer does (one Kafka message each: an event or a"
        " JSON array of events); intake validates them, the ledger shows each one's outcome",
    )
    send_cmd.add_argument("message", nargs="*", help="a JSON event or array (default: one a line from stdin)")
