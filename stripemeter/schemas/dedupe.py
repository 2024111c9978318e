"""The dedupe entry: what the meter keeps of a counted event under ``tenant + idempotency key``.

A changelog value (``versions.dump_value``: ``["v2", ...]``, format 1 the bare array), its fields in
the order of ``DedupeEntry``. It tells a later event with the same key whether it is the same input
again (same source), the same keyed message redelivered (same keyed offset) or a duplicate, and lets
the sweep expire it (event time, metric and customer name its stream's watermark).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from stripemeter.schemas.versions import dump_value, load_value

NO_SOURCE = -1  # the source fields of a correction's entry: it was not read from usage.events


class DedupeEntry(NamedTuple):
    source_partition: int
    source_offset: int
    source_index: int
    keyed_offset: int  # the keyed message that counted it
    ts_ms: int
    metric: str
    customer_ref: str


# Positions of the fields in the stored array, for the meter's hot loop (which reads the arrays as
# decoded) and the sweep.
SOURCE_PARTITION = DedupeEntry._fields.index("source_partition")
SOURCE_OFFSET = DedupeEntry._fields.index("source_offset")
SOURCE_INDEX = DedupeEntry._fields.index("source_index")
KEYED_OFFSET = DedupeEntry._fields.index("keyed_offset")
TS_MS = DedupeEntry._fields.index("ts_ms")
METRIC = DedupeEntry._fields.index("metric")
CUSTOMER_REF = DedupeEntry._fields.index("customer_ref")


def dump_entry(
    source_partition: int,
    source_offset: int,
    source_index: int,
    keyed_offset: int,
    ts_ms: int,
    metric: str,
    customer_ref: str,
) -> bytes:
    """The stored value of an entry, in the written format (the hot path calls this per counted
    event, so it takes the fields rather than a ``DedupeEntry``)."""
    return dump_value(
        [source_partition, source_offset, source_index, keyed_offset, ts_ms, metric, customer_ref]
    )


def correction_entry(keyed_offset: int, now_ms: int, metric: str, customer_ref: str) -> bytes:
    """The entry of a correction applied from the control message at ``keyed_offset``: kept like an
    event of ``now_ms``."""
    return dump_entry(NO_SOURCE, NO_SOURCE, NO_SOURCE, keyed_offset, now_ms, metric, customer_ref)


def load_entry(raw: bytes) -> list[Any]:
    """A stored entry of either format as its array (read by the positions above)."""
    entry: list[Any] = load_value(raw)
    return entry


def encode_entry(entry: DedupeEntry) -> bytes:
    return dump_entry(*entry)


def decode_entry(raw: bytes) -> DedupeEntry:
    return as_entry(load_value(raw))


def as_entry(entry: list[Any]) -> DedupeEntry:
    """A decoded stored array as named fields (a wrong length raises TypeError)."""
    return DedupeEntry(*entry)
