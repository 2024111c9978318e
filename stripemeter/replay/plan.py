"""What a replay changes (pure): too-late events grouped into one correction per counter.

A correction's id is derived from the counter and the exact events it counts, so the same correction
sent twice (a retried apply after a crash) is recognised by the meter and applied once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from stripemeter.events import MICROS
from stripemeter.streams.control import Correction

Source = tuple[str, int, int, int]  # usage.events topic, partition, offset, index
CounterId = tuple[str, str, datetime]  # metric, customer, bucket


@dataclass
class CounterChange:
    metric: str
    customer_ref: str
    bucket: datetime
    before_micros: int
    after_micros: int
    events: int

    @property
    def delta_micros(self) -> int:
        return self.after_micros - self.before_micros


@dataclass
class Plan:
    changes: list[CounterChange]
    corrections: list[Correction]
    keys: list[str]  # idempotency keys of the events counted


def bucket_of(ts: datetime) -> datetime:
    return ts.replace(minute=0, second=0, microsecond=0)


def correction_id(tenant: str, counter: CounterId, sources: list[Source]) -> str:
    text = "\x1f".join([tenant, counter[0], counter[1], counter[2].isoformat(), *map(str, sorted(sources))])
    return "rp_" + hashlib.sha256(text.encode()).hexdigest()[:32]


def make_plan(
    tenant: str, rows: list[dict[str, Any]], aggregations: dict[str, str], before: dict[CounterId, int]
) -> Plan:
    """``rows``: pending too-late events; ``before``: current counter totals in micro-units."""
    grouped: dict[CounterId, list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault((row["metric"], row["customer_ref"], bucket_of(row["ts"])), []).append(row)
    changes, corrections, keys = [], [], []
    for counter in sorted(grouped):
        events = grouped[counter]
        metric, customer, bucket = counter
        sources: list[Source] = [
            (r["source_topic"], r["source_partition"], r["source_offset"], r["source_index"]) for r in events
        ]
        aggregation = aggregations.get(metric, "sum")
        current = before.get(counter, 0)
        bucket_ms = int(bucket.timestamp() * 1000)
        ident = correction_id(tenant, counter, sources)
        if aggregation == "last":
            newest = max(events, key=lambda r: r["ts"])
            micros, ts_ms = int(newest["quantity_micros"]), int(newest["ts"].timestamp() * 1000)
            correction = Correction(ident, tenant, metric, customer, bucket_ms, "last", micros, ts_ms)
            after = micros  # it wins when newer than what the counter holds; a later event would win instead
        else:
            micros = (
                len(events) * MICROS
                if aggregation == "count"
                else sum(int(r["quantity_micros"]) for r in events)
            )
            correction = Correction(ident, tenant, metric, customer, bucket_ms, "add", micros, bucket_ms)
            after = current + micros
        changes.append(CounterChange(metric, customer, bucket, current, after, len(events)))
        corrections.append(correction)
        keys.extend(r["idempotency_key"] for r in events)
    return Plan(changes, corrections, keys)
