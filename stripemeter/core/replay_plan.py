"""What a replay changes (pure): too-late events grouped into one correction per counter.

A correction's id is derived from the counter and the exact events it counts. An apply records each
correction with the keys of the events it covers before sending it (see adapters/postgres/replay.py), so the
events a correction covers never change: a retried apply re-sends the corrections an earlier one recorded but
did not see sent (``Recorded``: same ids, so the meter applies each once) and plans new corrections only for
events no correction claims yet.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from stripemeter.domain.units import MICROS
from stripemeter.schemas.corrections import Correction, events_correction

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
    resent: int = 0  # of ``events``: covered by corrections an earlier apply recorded and did not see sent

    @property
    def delta_micros(self) -> int:
        return self.after_micros - self.before_micros


@dataclass(frozen=True)
class Recorded:
    """A correction an earlier apply recorded (its events claimed) but did not see acknowledged."""

    correction: Correction
    events: int


@dataclass
class Plan:
    changes: list[CounterChange]
    corrections: list[Correction]  # to send: the recorded ones again, then the new ones
    new: list[tuple[Correction, list[str]]] = field(default_factory=list)  # and the keys each counts

    @property
    def keys(self) -> list[str]:
        """Idempotency keys of the events the new corrections count."""
        return [key for _c, keys in self.new for key in keys]


def bucket_at(bucket_ms: int) -> datetime:
    return datetime.fromtimestamp(bucket_ms / 1000, tz=UTC)


def correction_id(tenant: str, counter: CounterId, sources: list[Source]) -> str:
    text = "\x1f".join([tenant, counter[0], counter[1], counter[2].isoformat(), *map(str, sorted(sources))])
    return "rp_" + hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Pending:
    """One counter's too-late events, folded: the correction counting them, their idempotency keys (in
    the order received; empty when not kept: a dry-run claims nothing) and how many there are."""

    correction: Correction
    keys: list[str]
    events: int


def make_plan(
    tenant: str,
    rows: list[dict[str, Any]],
    aggregations: dict[str, str],
    before: dict[CounterId, int],
    recorded: list[tuple[CounterId, Recorded]] | None = None,
) -> Plan:
    """``rows``: pending too-late events no correction claims (the pending-late query's columns);
    ``before``: current counter totals in micro-units; ``recorded``: corrections of earlier applies
    still to be confirmed sent, by counter."""
    grouped: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault((row["metric"], row["customer_ref"], row["bucket_ms"]), []).append(row)
    counters = {read: (read[0], read[1], bucket_at(read[2])) for read in grouped}
    pending = {counters[read]: pending_of(tenant, counters[read], events) for read, events in grouped.items()}
    return plan_from(pending, aggregations, before, recorded)


def plan_from(
    pending: dict[CounterId, Pending],
    aggregations: dict[str, str],
    before: dict[CounterId, int],
    recorded: list[tuple[CounterId, Recorded]] | None = None,
) -> Plan:
    """The plan of ``make_plan`` from the counters' events already folded (``PendingFold``)."""
    again: dict[CounterId, list[Recorded]] = {}
    for counter, r in recorded or []:
        again.setdefault(counter, []).append(r)
    changes: list[CounterChange] = []
    resend: list[Correction] = []
    new: list[tuple[Correction, list[str]]] = []
    for counter in sorted(pending.keys() | again.keys()):
        metric, customer, bucket = counter
        current = before.get(counter, 0)
        corrections = [r.correction for r in again.get(counter, [])]
        resend.extend(corrections)
        resent = sum(r.events for r in again.get(counter, []))
        events = pending.get(counter)
        if events is not None:
            corrections.append(events.correction)
            new.append((events.correction, events.keys))
        after = counter_after(current, corrections, aggregations.get(metric, "sum"))
        count = resent + (events.events if events is not None else 0)
        changes.append(CounterChange(metric, customer, bucket, current, after, count, resent))
    return Plan(changes, resend + [c for c, _keys in new], new)


def pending_of(
    tenant: str, counter: CounterId, events: list[dict[str, Any]], keep_keys: bool = True
) -> Pending:
    keys = [r["idempotency_key"] for r in events] if keep_keys else []
    return Pending(new_correction(tenant, counter, events), keys, len(events))


class PendingFold:
    """Too-late events folded one counter at a time, as they stream from PostgreSQL: it holds the
    events of the counter being read and one ``Pending`` per counter, never the whole window.

    Each counter's events must arrive together and in the order ``make_plan`` would see them (the
    pending-late query's: by idempotency key, then source); the result is then ``make_plan``'s."""

    def __init__(self, tenant: str, keep_keys: bool = True):
        self.tenant = tenant
        self.keep_keys = keep_keys
        self.done: dict[CounterId, Pending] = {}
        self.read: tuple[str, str, int] | None = None  # the counter being read: metric, customer, bucket_ms
        self.counter: CounterId | None = None  # the same with its bucket as a datetime
        self.events: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any]) -> None:
        read = (row["metric"], row["customer_ref"], row["bucket_ms"])
        if read != self.read:
            self._close()
            counter = (read[0], read[1], bucket_at(read[2]))
            if counter in self.done:
                raise ValueError(f"the events of counter {counter} did not arrive together")
            self.read, self.counter = read, counter
        self.events.append(row)

    def finish(self) -> dict[CounterId, Pending]:
        self._close()
        return self.done

    def _close(self) -> None:
        if self.counter is not None and self.events:
            self.done[self.counter] = pending_of(self.tenant, self.counter, self.events, self.keep_keys)
        self.read, self.counter, self.events = None, None, []


def counter_after(current: int, corrections: list[Correction], aggregation: str) -> int:
    """The counter's value once ``corrections`` are applied: for ``last`` the newest value wins when
    newer than what the counter holds (a later event would win instead), otherwise they add."""
    if aggregation == "last":
        lasts = sorted(
            ((c.ts_ms, c.last_micros if c.kind == "events" else c.micros) for c in corrections),
            key=lambda last: last[0],
        )
        return lasts[-1][1] if lasts else current
    added = 0
    for c in corrections:
        if c.kind == "events":
            added += c.events * MICROS if aggregation == "count" else c.micros
        else:
            added += c.micros
    return current + added


def new_correction(tenant: str, counter: CounterId, events: list[dict[str, Any]]) -> Correction:
    """One correction counting ``events`` (too-late events of one counter) into it, folded every way
    (a counter keeps every aggregation's total, see core/counting.py)."""
    metric, customer, bucket = counter
    sources: list[Source] = [
        (r["source_topic"], r["source_partition"], r["source_offset"], r["source_index"]) for r in events
    ]
    folded = [(int(r["quantity_micros"]), r["ts_ms"]) for r in events]
    ident = correction_id(tenant, counter, sources)
    return events_correction(ident, tenant, metric, customer, int(bucket.timestamp() * 1000), folded)
