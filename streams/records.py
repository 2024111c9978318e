"""The internal keyed-event record: a validated event plus where it came from.

Compact JSON arrays (not objects) keep the hot path cheap; one Kafka message holds many.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from stripemeter.events import UsageEvent


@dataclass(frozen=True, slots=True)
class Source:
    """Where an event was read from usage.events: its identity as an input."""

    partition: int
    offset: int
    index: int  # position inside an array message; 0 for a single event


def encode_keyed(event: UsageEvent, source: Source) -> list[Any]:
    return [
        event.tenant_id,
        event.metric,
        event.customer_ref,
        event.quantity_micros,
        event.ts_ms,
        event.idempotency_key,
        int(event.key_derived),
        event.resource_id,
        event.meta,
        source.partition,
        source.offset,
        source.index,
    ]


def decode_keyed(item: list[Any]) -> tuple[UsageEvent, Source]:
    (tenant, metric, customer, micros, ts_ms, key, derived, resource, meta, part, offset, index) = item
    return (
        UsageEvent(tenant, metric, customer, micros, ts_ms, key, bool(derived), resource, meta),
        Source(part, offset, index),
    )


def encode_batch(items: list[list[Any]]) -> bytes:
    return orjson.dumps(items)


def decode_batch(raw: bytes) -> list[list[Any]]:
    value = orjson.loads(raw)
    assert isinstance(value, list)
    return value
