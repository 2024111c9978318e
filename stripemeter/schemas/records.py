"""The internal keyed-event record: a validated event plus where it came from.

Compact JSON arrays (not objects) keep the hot path cheap; one Kafka message holds many, after the
record format's version (``[2, item, ...]``; the previous release wrote ``[item, ...]``, see
``versions.py``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

from stripemeter.schemas import versions
from stripemeter.schemas.events import UsageEvent


class Source(NamedTuple):
    """Where an event was read from usage.events: its identity as an input."""

    partition: int
    offset: int
    # the source index: position inside an array message; 0 for a single event. Not named `index`,
    # which would shadow tuple.index.
    position: int


def encode_keyed(event: UsageEvent, source: Source) -> list[Any]:
    return keyed_item(event, *source)


def keyed_item(event: UsageEvent, partition: int, offset: int, index: int) -> list[Any]:
    """The keyed record of ``event`` read at ``partition``/``offset`` (``index`` inside an array)."""
    tenant, metric, customer, micros, ts_ms, key, derived, resource, meta = event
    return [tenant, metric, customer, micros, ts_ms, key, int(derived), resource, meta,
            partition, offset, index]  # fmt: skip


def decode_keyed(item: list[Any]) -> tuple[UsageEvent, Source]:
    (tenant, metric, customer, micros, ts_ms, key, derived, resource, meta, part, offset, index) = item
    return (
        UsageEvent(tenant, metric, customer, micros, ts_ms, key, bool(derived), resource, meta),
        Source(part, offset, index),
    )


def encode_batch(items: list[list[Any]]) -> bytes:
    """A keyed message of ``items`` in the written format (see ``packing.pack_arrays``, which intake
    uses to bound messages by bytes)."""
    if versions.write_version() >= versions.CURRENT:
        return orjson.dumps([versions.CURRENT, *items])
    return orjson.dumps(items)


def decode_batch(raw: bytes) -> list[list[Any]]:
    """The items of a keyed message of either format; one of a later format raises
    ``versions.UnknownRecordVersion``."""
    items: list[list[Any]] = versions.array_items(orjson.loads(raw), "a keyed message")
    return items
