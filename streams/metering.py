"""Metering: one keyed message -> dedupe, lateness, counters, and an outcome for every event.

Decisions per event, exact under redelivery (see the README's "Exactly once"):
- dedupe entry ``tenant + idempotencyKey`` exists
  - written by this very event from this very keyed message: a redelivery of the message after a
    crash: counted again (the counter's applied offset keeps it from adding twice);
  - written by this very event (same source in usage.events) from another keyed message: intake
    re-sent it after a crash: already handled, skipped without a trace;
  - written by another input: a duplicate;
- no entry, and ``ts`` older than the stream's watermark minus the metric's lateness: too late;
- otherwise: counted. Its dedupe entry, the watermark and the counter are written.

Only counted events enter the dedupe table, so a counted duplicate always sees its original.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from stripemeter.streams.counting import SEP, Partial, apply, counter_key
from stripemeter.streams.policy import Policies
from stripemeter.streams.records import Source, decode_keyed

from stripemeter.events import UsageEvent

COUNTED, DUPLICATE, LATE = "counted", "duplicate", "late"


class KV(Protocol):
    def get(self, partition: int, key: bytes) -> bytes | None: ...

    def put(self, partition: int, key: bytes, value: bytes | None) -> None: ...


@dataclass
class Outcomes:
    """Everything the processed messages produced, until a checkpoint takes it."""

    ledger: list[list[Any]] = field(default_factory=list)  # [outcome, *keyed item]
    late: list[bytes] = field(default_factory=list)  # usage.late records
    touched: dict[bytes, int] = field(default_factory=dict)  # counter key -> keyed partition
    counts: Counter[str] = field(default_factory=Counter)


def dedupe_key(event: UsageEvent) -> bytes:
    return f"{event.tenant_id}{SEP}{event.idempotency_key}".encode()


def stream_key(event: UsageEvent) -> bytes:
    return f"{event.tenant_id}{SEP}{event.metric}{SEP}{event.customer_ref}".encode()


def iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def late_record(event: UsageEvent, watermark_ms: int, lateness_ms: int) -> bytes:
    """The event as received (normalised) plus the watermark and lateness it failed against."""
    record: dict[str, Any] = {
        "tenantId": event.tenant_id,
        "metric": event.metric,
        "customerRef": event.customer_ref,
        "quantity": event.quantity_micros / 1_000_000
        if event.quantity_micros % 1_000_000
        else event.quantity_micros // 1_000_000,
        "ts": iso_ms(event.ts_ms),
        "idempotencyKey": event.idempotency_key,
        "watermark": iso_ms(watermark_ms),
        "lateness": lateness_ms // 1000,
    }
    if event.resource_id is not None:
        record["resourceId"] = event.resource_id
    if event.meta is not None:
        record["meta"] = event.meta
    return orjson.dumps(record)


class Metering:
    def __init__(self, dedupe: KV, counters: KV, watermarks: KV, policies: Policies):
        self.dedupe = dedupe
        self.counters = counters
        self.watermarks = watermarks
        self.policies = policies
        self.outcomes = Outcomes()

    def take_outcomes(self) -> Outcomes:
        taken, self.outcomes = self.outcomes, Outcomes()
        return taken

    def process(self, partition: int, offset: int, items: list[list[Any]]) -> None:
        out = self.outcomes
        partials: dict[bytes, Partial] = {}
        watermarks: dict[bytes, int | None] = {}
        advanced: set[bytes] = set()
        for item in items:
            event, source = decode_keyed(item)
            outcome = self._decide(partition, offset, event, source, watermarks, out)
            if outcome is None:
                continue
            out.ledger.append([outcome, *item])
            out.counts[outcome] += 1
            if outcome != COUNTED:
                continue
            skey = stream_key(event)
            current = self._watermark(partition, skey, watermarks)
            if current is None or current < event.ts_ms:
                watermarks[skey] = event.ts_ms
                advanced.add(skey)
            ckey = counter_key(event.tenant_id, event.metric, event.customer_ref, event.bucket_ms).encode()
            partial = partials.get(ckey)
            if partial is None:
                partial = partials[ckey] = Partial(
                    self.policies.get(event.tenant_id, event.metric).aggregation
                )
            partial.add(event.quantity_micros, event.ts_ms)
        for ckey, partial in partials.items():
            raw = self.counters.get(partition, ckey)
            new = apply(orjson.loads(raw) if raw is not None else None, partial, offset)
            if new is not None:
                self.counters.put(partition, ckey, orjson.dumps(new))
            out.touched[ckey] = partition  # published again even when already applied
        for skey in advanced:
            self.watermarks.put(partition, skey, str(watermarks[skey]).encode())

    def _watermark(self, partition: int, skey: bytes, cache: dict[bytes, int | None]) -> int | None:
        if skey not in cache:
            stored = self.watermarks.get(partition, skey)
            cache[skey] = int(stored) if stored is not None else None
        return cache[skey]

    def _decide(
        self,
        partition: int,
        offset: int,
        event: UsageEvent,
        source: Source,
        watermarks: dict[bytes, int | None],
        out: Outcomes,
    ) -> str | None:
        dkey = dedupe_key(event)
        raw = self.dedupe.get(partition, dkey)
        if raw is not None:
            seen = orjson.loads(raw)  # [src partition, src offset, src index, keyed offset, ts, ...]
            if (seen[0], seen[1], seen[2]) == (source.partition, source.offset, source.index):
                return COUNTED if seen[3] == offset else None
            return DUPLICATE
        watermark = self._watermark(partition, stream_key(event), watermarks)
        lateness = self.policies.get(event.tenant_id, event.metric).lateness_ms
        if watermark is not None and event.ts_ms < watermark - lateness:
            out.late.append(late_record(event, watermark, lateness))
            return LATE
        self.dedupe.put(
            partition,
            dkey,
            orjson.dumps(
                [
                    source.partition,
                    source.offset,
                    source.index,
                    offset,
                    event.ts_ms,
                    event.metric,
                    event.customer_ref,
                ]
            ),
        )
        return COUNTED
