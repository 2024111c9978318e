"""The internal keyed-event record: a validated event plus where it came from.

On the wire a keyed item is a compact JSON array (not an object), its fields in the order of
``KeyedItem``; one Kafka message holds many, after the record format's version (``[2, item, ...]``;
the previous release wrote ``[item, ...]``, see ``stripemeter/schemas/versions.py``). The meter's
hot loop reads the decoded arrays by the positions below (building a named tuple per event would
cost about a tenth of its time); everything else decodes them into ``KeyedItem``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

from stripemeter.schemas import versions
from stripemeter.schemas.events import UsageEvent


class KeyedItem(NamedTuple):
    """One keyed item, its fields in wire order: the event's fields, then its place in usage.events."""

    tenant_id: str
    metric: str
    customer_ref: str
    quantity_micros: int
    ts_ms: int
    idempotency_key: str
    key_derived: int  # 0 or 1 on the wire
    resource_id: str | None
    meta: dict[str, Any] | None
    source_partition: int
    source_offset: int
    # position inside an array message of usage.events; 0 for a single event
    source_index: int

    def event(self) -> UsageEvent:
        return keyed_event(self)

    def source(self) -> Source:
        return Source(self.source_partition, self.source_offset, self.source_index)


# Positions of the fields in the wire array, for code that reads the arrays as they were decoded.
TENANT_ID = KeyedItem._fields.index("tenant_id")
METRIC = KeyedItem._fields.index("metric")
CUSTOMER_REF = KeyedItem._fields.index("customer_ref")
QUANTITY_MICROS = KeyedItem._fields.index("quantity_micros")
TS_MS = KeyedItem._fields.index("ts_ms")
IDEMPOTENCY_KEY = KeyedItem._fields.index("idempotency_key")
SOURCE_PARTITION = KeyedItem._fields.index("source_partition")
SOURCE_OFFSET = KeyedItem._fields.index("source_offset")
SOURCE_INDEX = KeyedItem._fields.index("source_index")


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
    """The keyed record of ``event`` read at ``partition``/``offset`` (``index`` inside an array), as
    the wire array in ``KeyedItem``'s order (``orjson`` writes lists, not named tuples; intake builds
    one per event, so this stays a plain list display)."""
    tenant, metric, customer, micros, ts_ms, key, derived, resource, meta = event
    return [tenant, metric, customer, micros, ts_ms, key, int(derived), resource, meta,
            partition, offset, index]  # fmt: skip


def as_keyed(item: list[Any]) -> KeyedItem:
    """A decoded wire array as named fields (a wrong length raises TypeError)."""
    return KeyedItem(*item)


def keyed_event(item: list[Any] | KeyedItem) -> UsageEvent:
    """The event of a keyed item (a decoded wire array, or named), without building a ``KeyedItem``."""
    tenant, metric, customer, micros, ts_ms, key, derived, resource, meta, _, _, _ = item
    return UsageEvent(tenant, metric, customer, micros, ts_ms, key, bool(derived), resource, meta)


def decode_keyed(item: list[Any]) -> tuple[UsageEvent, Source]:
    keyed = as_keyed(item)
    return keyed.event(), keyed.source()


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
