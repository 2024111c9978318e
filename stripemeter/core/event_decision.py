"""The meter's decision for one event of a keyed message (pure: no state, no clock, no I/O).

It depends only on the event, its dedupe entry (if it has one), the keyed message's offset, its
stream's watermark, the metric's policy and the event's hour counter as it stands:
- an entry from another input: a duplicate;
- an entry from this very input written by another keyed message: intake re-sent it after a crash,
  already handled: skipped without a trace;
- an entry written by this very keyed message: a redelivery after a crash: counted again (the
  counter's applied offset keeps it from adding twice, and the entry stays as it is);
- no entry, older than the watermark minus the lateness (or the policy's horizon): too late;
- no entry, and counting it would take its hour's counter beyond 64-bit micro-units: rejected;
- otherwise: counted, and its dedupe entry is written.
Counted and counted-again events add their quantity at their event time to their hour's counter;
the others change no counter.

``Metering.process`` gathers the inputs for every event of a message and applies the outcomes. The
event and its entry are the wire arrays as decoded (``stripemeter/schemas/records.py``,
``stripemeter/schemas/dedupe.py``), read by their named positions: the hot loop builds no object per
event.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from stripemeter.core.counting import CounterValue, Partial, aggregation_of
from stripemeter.domain.policy import MetricPolicy
from stripemeter.domain.units import MICROS
from stripemeter.schemas import dedupe
from stripemeter.schemas.events import MAX_MICROS
from stripemeter.schemas.records import QUANTITY_MICROS, SOURCE_INDEX, SOURCE_OFFSET, SOURCE_PARTITION, TS_MS

Outcome = Literal["counted", "counted_again", "already_handled", "duplicate", "late", "overflow"]
COUNTED: Final = "counted"
COUNTED_AGAIN: Final = "counted_again"  # the same keyed message redelivered
ALREADY_HANDLED: Final = "already_handled"  # the same input re-sent by intake in another keyed message
DUPLICATE: Final = "duplicate"
LATE: Final = "late"
OVERFLOW: Final = "overflow"

NEVER_BEFORE = -(2**63)  # an event time earlier than any real one


def decide(
    item: list[Any],
    entry: list[Any] | None,
    keyed_offset: int,
    watermark_ms: int | None,
    policy: MetricPolicy,
    counter: CounterValue | None,
    pending: Partial | None,
) -> Outcome:
    """The outcome of the keyed item ``item`` read from the keyed message at ``keyed_offset``.

    ``entry`` is its dedupe entry; ``watermark_ms`` its stream's watermark (None before the stream's
    first counted event); ``counter`` its hour's counter before this message and ``pending`` what
    this message adds to it so far."""
    if entry is not None:
        if (
            entry[dedupe.SOURCE_PARTITION] != item[SOURCE_PARTITION]
            or entry[dedupe.SOURCE_OFFSET] != item[SOURCE_OFFSET]
            or entry[dedupe.SOURCE_INDEX] != item[SOURCE_INDEX]
        ):
            return DUPLICATE
        if entry[dedupe.KEYED_OFFSET] != keyed_offset:
            return ALREADY_HANDLED
        return COUNTED_AGAIN
    if policy.too_late(item[TS_MS], watermark_ms):
        return LATE
    # overflow: counting it would take the counter (as stored, plus what is pending) beyond what
    # 64-bit micro-units hold; a ``last`` value is one event's quantity, which validation bounds
    counted_as = aggregation_of(counter, policy.aggregation)
    if counted_as == "last":
        return COUNTED
    base = int(counter[0] or 0) if counter is not None else 0
    added = pending.added(counted_as) if pending is not None else 0
    if abs(base + added + (MICROS if counted_as == "count" else item[QUANTITY_MICROS])) > MAX_MICROS:
        return OVERFLOW
    return COUNTED


def late_against(watermark_ms: int | None, policy: MetricPolicy) -> int:
    """The watermark a too-late event failed against: its stream's, or the horizon's if later."""
    return max(
        watermark_ms if watermark_ms is not None else NEVER_BEFORE, policy.horizon_ms + policy.lateness_ms
    )
