"""Counter values and how events fold into them (pure).

A counter value is ``[value_micros, seq, applied_offset, last_ts_ms]``:
- ``value_micros``: the aggregate in micro-units (a count of n events is n * 10**6);
- ``seq``: grows by one with every change, so consumers can keep the newest;
- ``applied_offset``: offset, in the keyed partition that feeds this counter, of the last message
  applied. All events of a counter come from one partition in order, so a message at or below it
  has been applied already (a redelivery after a crash) and must not change the value again;
- ``last_ts_ms``: event time of the value for ``last`` counters (the newest event wins).
"""

from __future__ import annotations

from dataclasses import dataclass

from stripemeter.domain.policy import Aggregation
from stripemeter.domain.units import MICROS

SEP = "\x1f"  # never in tenant or metric; customerRef is split from the right
SEP_BYTES = SEP.encode()

CounterValue = list[int]


def stream_key(tenant_id: str, metric: str, customer_ref: str) -> str:
    """One counter stream: the unit of watermarks and lateness."""
    return f"{tenant_id}{SEP}{metric}{SEP}{customer_ref}"


def counter_key(tenant_id: str, metric: str, customer_ref: str, bucket_ms: int) -> str:
    return f"{stream_key(tenant_id, metric, customer_ref)}{SEP}{bucket_ms}"


def bucket_key(stream: bytes, bucket_ms: int) -> bytes:
    """``counter_key`` as bytes, from a stream key already encoded (the hot path has one)."""
    return b"%s%s%d" % (stream, SEP_BYTES, bucket_ms)


def split_counter_key(key: str) -> tuple[str, str, str, int]:
    tenant, metric, rest = key.split(SEP, 2)
    customer, bucket = rest.rsplit(SEP, 1)
    return tenant, metric, customer, int(bucket)


@dataclass
class Partial:
    """What one message adds to one counter."""

    aggregation: Aggregation
    micros: int = 0  # sum of quantities, or number of events * MICROS for count
    last_ts: int = -1
    last_micros: int = 0

    def add(self, quantity_micros: int, ts_ms: int) -> None:
        if self.aggregation == "sum":
            self.micros += quantity_micros
        elif self.aggregation == "count":
            self.micros += MICROS
        elif ts_ms >= self.last_ts:
            self.last_ts, self.last_micros = ts_ms, quantity_micros


def apply(value: CounterValue | None, partial: Partial, offset: int) -> CounterValue | None:
    """The counter after ``partial`` from the message at ``offset``; None if already applied."""
    if value is not None and value[2] >= offset:
        return None
    if value is None:
        value = [0, 0, -1, -1]
    total, seq, _, last_ts = value
    if partial.aggregation == "last":
        if partial.last_ts >= last_ts:
            total, last_ts = partial.last_micros, partial.last_ts
    else:
        total += partial.micros
    return [total, seq + 1, offset, last_ts]
