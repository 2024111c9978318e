"""Counting: keyed events folded into hour-bucket counters, exactly once under redelivery.

Pure: works on any MutableMapping (the Faust table in the worker, a dict in tests).

Every counter value is ``[total_micros, seq, applied_offset]``. ``applied_offset`` is the offset, in
the keyed topic partition that feeds this counter, of the last message applied to it. All events of
one counter come from one partition in order, so a message at an offset <= ``applied_offset`` has
already been applied: after a crash it is skipped for that counter, and the counter is reported as
touched so its latest total is published again (that publication may have been lost with the crash).
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from stripemeter.events import UsageEvent

SEP = "\x1f"  # customerRef may hold any printable character; this one it may not sensibly hold

CounterValue = list[int]  # [total_micros, seq, applied_offset]


def counter_key(tenant_id: str, metric: str, customer_ref: str, bucket_ms: int) -> str:
    return f"{tenant_id}{SEP}{metric}{SEP}{customer_ref}{SEP}{bucket_ms}"


def split_counter_key(key: str) -> tuple[str, str, str, int]:
    tenant, metric, rest = key.split(SEP, 2)
    customer, bucket = rest.rsplit(SEP, 1)
    return tenant, metric, customer, int(bucket)


@dataclass
class FoldResult:
    touched: set[str] = field(default_factory=set)  # counters whose total may need publishing
    counted: int = 0


def fold(
    events: Iterable[UsageEvent], offset: int, table: MutableMapping[str, Any], result: FoldResult
) -> None:
    """Add ``events`` (all from the keyed message at ``offset``) to their counters."""
    sums: dict[str, int] = {}
    for event in events:
        key = counter_key(event.tenant_id, event.metric, event.customer_ref, event.bucket_ms)
        sums[key] = sums.get(key, 0) + event.quantity_micros
        result.counted += 1
    for key, micros in sums.items():
        value = table.get(key)
        if value is None:
            table[key] = [micros, 1, offset]
        elif value[2] < offset:
            table[key] = [value[0] + micros, value[1] + 1, offset]
        # else: already applied before a crash; publish again below
        result.touched.add(key)
