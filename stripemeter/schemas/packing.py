"""Kafka messages bounded by bytes, never by a count alone.

Intake, the checkpoint and corrections write many items into one message, as a JSON array. How many
fit depends on the items: 2,000 events with a 4 KiB ``meta`` are 8 MB, twice what the keyed topic
takes, and one such message stopped every tenant's counting. Arrays are packed here up to the target
topic's ``max.message.bytes`` (read from the broker when a stage starts), less room for the record's
and the batch's own headers.
"""

from __future__ import annotations

from collections.abc import Sequence

from stripemeter.domain.errors import Permanent
from stripemeter.schemas import versions

# a record batch's header (61 bytes), the record's own (a few varints), its key: generous room
HEADROOM_BYTES = 1024


class ItemTooLarge(Permanent, ValueError):
    """One item alone does not fit a message of the topic: it cannot be written there, however often
    it is tried."""

    def __init__(self, index: int, size: int, limit: int) -> None:
        super().__init__(f"an item of {size} bytes does not fit a message of at most {limit} bytes")
        self.index = index
        self.size = size
        self.limit = limit


def payload_limit(max_message_bytes: int) -> int:
    return max_message_bytes - HEADROOM_BYTES


def chunk_lengths(sizes: Sequence[int], limit: int, head: int = 0) -> list[int]:
    """How many items, in order, each JSON array of items of these encoded sizes holds when every
    array stays within ``limit`` bytes (brackets and commas included, and ``head`` bytes before the
    first item: the record format's version)."""
    lengths: list[int] = []
    empty = 2 + head  # the brackets
    count, size = 0, empty
    for index, item in enumerate(sizes):
        if item + empty > limit:
            raise ItemTooLarge(index, item, limit)
        if count and size + item + 1 > limit:
            lengths.append(count)
            count, size = 0, empty
        size += item + (1 if count else 0)
        count += 1
    if count:
        lengths.append(count)
    return lengths


def pack_arrays(encoded: Sequence[bytes], limit: int) -> list[bytes]:
    """Array messages of the already encoded items, in order, each at most ``limit`` bytes, in the
    written record format (``[2, item, ...]``, or the previous release's ``[item, ...]``)."""
    head = versions.array_head()
    messages, start = [], 0
    for length in chunk_lengths([len(item) for item in encoded], limit, len(head) - 1):
        messages.append(head + b",".join(encoded[start : start + length]) + b"]")
        start += length
    return messages
