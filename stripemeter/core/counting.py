"""Counter values and how events fold into them (pure).

A counter value is ``[value_micros, seq, applied_offset, last_ts_ms, sum_micros, events, last_micros,
adjusted_micros, aggregation]``:
- ``value_micros``: what the counter holds under its aggregation (a count of n events is n * 10**6),
  the one number deltas, the sink and the writer read;
- ``seq``: grows by one with every change, so consumers can keep the newest;
- ``applied_offset``: offset, in the keyed partition that feeds this counter, of the last message
  applied. All events of a counter come from one partition in order, so a message at or below it
  has been applied already (a redelivery after a crash) and must not change the value again;
- ``last_ts_ms``: event time of the newest event (the newest wins for ``last``);
- ``sum_micros``, ``events``, ``last_micros``: the hour's events folded every way at once (``sum_micros``
  is null once it would leave 64 bits), so a change of the metric's aggregation re-expresses the hour
  exactly, with no event read again (``reaggregate``);
- ``adjusted_micros``: signed corrections (adjustments), added to a ``sum`` or ``count`` value;
- ``aggregation``: the aggregation the value is expressed in (0 sum, 1 count, 2 last). A counter keeps
  the aggregation it was created with until it is re-aggregated.

A counter written before the per-aggregation totals existed has only the first four fields: it keeps
aggregating as before and cannot be re-aggregated.
"""

from __future__ import annotations

from dataclasses import dataclass

from stripemeter.domain.errors import Permanent
from stripemeter.domain.policy import AGGREGATIONS, Aggregation
from stripemeter.domain.units import MICROS

SEP = "\x1f"  # never in tenant or metric; customerRef is split from the right
SEP_BYTES = SEP.encode()
MAX_SUM = 2**63 - 1  # a sum beyond 64 bits is kept as unknown (null): JSON numbers stop there

CounterValue = list[int | None]
LEGACY_FIELDS = 4  # a counter from before the per-aggregation totals
FIELDS = 9


def stream_key(tenant_id: str, metric: str, customer_ref: str) -> str:
    """One counter stream: the unit of watermarks and lateness."""
    return f"{tenant_id}{SEP}{metric}{SEP}{customer_ref}"


def counter_key(tenant_id: str, metric: str, customer_ref: str, bucket_ms: int) -> str:
    return f"{stream_key(tenant_id, metric, customer_ref)}{SEP}{bucket_ms}"


def bucket_key(stream: bytes, bucket_ms: int) -> bytes:
    """``counter_key`` as bytes, from a stream key already encoded (the hot path has one)."""
    return b"%s%s%d" % (stream, SEP_BYTES, bucket_ms)


def metric_prefix(tenant_id: str, metric: str) -> bytes:
    """What the keys of every counter of one metric start with."""
    return f"{tenant_id}{SEP}{metric}{SEP}".encode()


def split_counter_key(key: str) -> tuple[str, str, str, int]:
    tenant, metric, rest = key.split(SEP, 2)
    customer, bucket = rest.rsplit(SEP, 1)
    return tenant, metric, customer, int(bucket)


def aggregation_code(aggregation: Aggregation) -> int:
    return AGGREGATIONS.index(aggregation)


@dataclass
class Partial:
    """What one message adds to one counter; ``aggregation`` is the metric's, for a new counter."""

    aggregation: Aggregation
    micros: int = 0  # sum of the quantities
    events: int = 0
    last_ts: int = -1
    last_micros: int = 0
    adjusted: int = 0  # signed corrections

    def add(self, quantity_micros: int, ts_ms: int) -> None:
        self.micros += quantity_micros
        self.events += 1
        if ts_ms >= self.last_ts:
            self.last_ts, self.last_micros = ts_ms, quantity_micros

    def add_events(self, micros: int, events: int, last_ts: int, last_micros: int) -> None:
        """Events folded elsewhere (a replay's correction), as if added one by one."""
        self.micros += micros
        self.events += events
        if events and last_ts >= self.last_ts:
            self.last_ts, self.last_micros = last_ts, last_micros

    def set_last(self, micros: int, ts_ms: int) -> None:
        """A ``last`` correction: the value at ``ts_ms``, if newest."""
        if ts_ms >= self.last_ts:
            self.last_ts, self.last_micros = ts_ms, micros

    def adjust(self, micros: int) -> None:
        self.adjusted += micros

    def added(self, aggregation: Aggregation) -> int:
        """What this adds to a ``sum`` or ``count`` value."""
        if aggregation == "count":
            return self.events * MICROS + self.adjusted
        return self.micros + self.adjusted


def aggregation_of(value: CounterValue | None, default: Aggregation) -> Aggregation:
    """The aggregation a counter's value is expressed in (``default`` for a new or older counter)."""
    if value is None or len(value) < FIELDS:
        return default
    code = value[8]
    return AGGREGATIONS[code] if isinstance(code, int) else default


def view(
    aggregation: Aggregation, sum_micros: int | None, events: int, last_micros: int, adjusted: int
) -> int | None:
    """The value under ``aggregation``; None when it cannot be told (a sum beyond 64 bits)."""
    if aggregation == "last":
        return last_micros
    if aggregation == "count":
        return events * MICROS + adjusted
    return None if sum_micros is None else sum_micros + adjusted


def projected(value: CounterValue | None, partial: Partial) -> int:
    """A ``sum`` or ``count`` counter's value once ``partial`` is applied (for the overflow check)."""
    aggregation = aggregation_of(value, partial.aggregation)
    base = int(value[0] or 0) if value is not None else 0
    return base + partial.added(aggregation)


def apply(value: CounterValue | None, partial: Partial, offset: int) -> CounterValue | None:
    """The counter after ``partial`` from the message at ``offset``; None if already applied."""
    if value is not None and value[2] is not None and value[2] >= offset:
        return None
    if value is not None and len(value) < FIELDS:
        return _apply_legacy(value, partial, offset)
    if value is None:
        value = [0, 0, -1, -1, 0, 0, 0, 0, aggregation_code(partial.aggregation)]
    _, seq, _, last_ts, sum_micros, events, last_micros, adjusted, code = value
    assert isinstance(seq, int) and isinstance(last_ts, int) and isinstance(events, int)
    assert isinstance(last_micros, int) and isinstance(adjusted, int) and isinstance(code, int)
    if sum_micros is not None:
        sum_micros += partial.micros
        if abs(sum_micros) > MAX_SUM:
            sum_micros = None
    events += partial.events
    if partial.last_ts >= 0 and partial.last_ts >= last_ts:
        last_ts, last_micros = partial.last_ts, partial.last_micros
    adjusted += partial.adjusted
    aggregation = AGGREGATIONS[code]
    total = view(aggregation, sum_micros, events, last_micros, adjusted)
    if total is None:  # a sum counter's sum cannot leave 64 bits: the meter rejects such events first
        raise ArithmeticError("a sum counter's total left 64 bits")
    return [total, seq + 1, offset, last_ts, sum_micros, events, last_micros, adjusted, code]


def _apply_legacy(value: CounterValue, partial: Partial, offset: int) -> CounterValue:
    """A counter from before the per-aggregation totals: its value only, as it always aggregated."""
    total, seq, _, last_ts = (int(v or 0) for v in value[:LEGACY_FIELDS])
    if partial.aggregation == "last":
        if partial.last_ts >= 0 and partial.last_ts >= last_ts:
            total, last_ts = partial.last_micros, partial.last_ts
    else:
        total += partial.added(partial.aggregation)
    return [total, seq + 1, offset, last_ts]


def reaggregate(value: CounterValue, aggregation: Aggregation, offset: int) -> CounterValue | None:
    """The counter expressed under ``aggregation``, changed at ``offset``; None when it holds that
    already. Raises ``CannotReaggregate`` for a counter that cannot be told under it."""
    if len(value) < FIELDS:
        raise CannotReaggregate("counted before counters kept every aggregation's total")
    _, seq, _, last_ts, sum_micros, events, last_micros, adjusted, code = value
    assert isinstance(seq, int) and isinstance(events, int)
    assert isinstance(last_micros, int) and isinstance(adjusted, int)
    new_code = aggregation_code(aggregation)
    total = view(aggregation, sum_micros, events, last_micros, adjusted)
    if total is None:
        raise CannotReaggregate("its sum left 64 bits")
    if new_code == code and total == value[0]:
        return None
    return [total, seq + 1, offset, last_ts, sum_micros, events, last_micros, adjusted, new_code]


class CannotReaggregate(Permanent, ValueError):
    """A counter whose value under another aggregation is unknown: it keeps its value."""
