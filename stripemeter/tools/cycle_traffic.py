"""The billing cycle's traffic: a compressed month of usage, and the oracle of what must be counted.

Customers are drawn with Zipf weights (a few heavy customers, a long tail). Event time runs through
the cycle's span as the run's wall time does. Besides in-order events, a share of the traffic is
duplicates (an exact copy of an event already sent), late events inside the lateness window and
events too late for it. Which is which is decided against the watermark each customer's stream has
when the worker reads the event: the newest event time of the customer sent in an earlier tick
(one customer's events always take the same way to the same partition - straight to usage.events,
or through the API for a tenth of the customers - so the worker reads them in the order sent).
The oracle is what the pipeline must count: every event once, except the too-late ones.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import orjson

from stripemeter.domain.timefmt import iso_ms
from stripemeter.domain.units import MICROS

HOUR_S = 3600
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
ZIPF_EXPONENT = 1.1
MAX_QUANTITY = 5
PER_MESSAGE = 1000  # events in one Kafka message at most (what intake accepts)
# a late event inside the window is at most this much older than its stream's watermark, and never
# older than this much before the cycle's present: the writer must still be allowed to push its hour
LATE_SPREAD_MS = DAY_MS
LATE_FLOOR_MS = 2 * DAY_MS
# one customer in this many sends its events through the API's ingest endpoint, the others straight
# to usage.events (as any Kafka producer may); each customer keeps to one way, so to one partition
API_EVERY = 10
# how close to the application clock's present an event time may come (intake refuses events more
# than an hour in the future; the writer pushes an hour only once it has begun)
CLOCK_LEAD_S = 58 * 60


@dataclass(frozen=True)
class Timeline:
    """The cycle's event time: ``days`` ending after a month end, and where the application clock
    stands before and after it moves across that month end."""

    span_start: int  # unix seconds
    month_end: int
    span_end: int

    @staticmethod
    def around(month_end: datetime, days: int) -> Timeline:
        """Six sevenths of the days before the month end (at least one), the rest after it."""
        before = max(1, days * 6 // 7)
        if days - before < 1:
            raise ValueError("the cycle needs at least 2 days (one on each side of the month end)")
        end = int(month_end.timestamp())
        return Timeline(end - before * 86400, end, end + (days - before) * 86400)

    @property
    def month_end_fraction(self) -> float:
        return (self.month_end - self.span_start) / (self.span_end - self.span_start)

    def event_time_ms(self, fraction: float) -> int:
        return int((self.span_start + fraction * (self.span_end - self.span_start)) * 1000)

    @property
    def clock_before(self) -> float:
        """The application clock in the month's last hour, ahead of all of the month's event times."""
        return float(self.month_end - CLOCK_LEAD_S)

    @property
    def clock_after(self) -> float:
        """Moved across the month end: in the cycle's last hour."""
        return float(self.span_end - CLOCK_LEAD_S)

    def clock_closed(self, invoice_grace_seconds: int) -> float:
        """The clock once the month is closed: past the cycle and past the invoice grace."""
        return float(max(self.span_end, self.month_end + invoice_grace_seconds) + 60)

    def text(self) -> str:
        def day(s: int) -> str:
            return datetime.fromtimestamp(s, tz=UTC).strftime("%Y-%m-%d %H:%M")

        return f"{day(self.span_start)} .. {day(self.span_end)} UTC, month end {day(self.month_end)}"

    def periods(self) -> list[str]:
        """The billing periods (UTC months) the event time touches."""
        months = {
            (datetime.fromtimestamp(self.span_start, tz=UTC) + timedelta(days=d)).strftime("%Y-%m")
            for d in range((self.span_end - self.span_start) // 86400)
        }
        return sorted(months)


@dataclass(frozen=True)
class Mix:
    """Shares of the traffic besides in-order events."""

    duplicates: float = 0.02
    late: float = 0.03  # inside the lateness window: counted
    too_late: float = 0.01  # beyond it: not counted (usage.late)


@dataclass
class Tick:
    """One tick's events: messages (JSON arrays) by usage.events partition, and events for the API."""

    kafka: dict[int, list[bytes]]
    api: list[bytes]


@dataclass
class Tally:
    sent: int = 0
    counted: int = 0
    duplicates: int = 0
    late: int = 0
    too_late: int = 0
    units: int = 0


@dataclass
class Traffic:
    """Generates the events tick by tick and keeps the oracle."""

    tenant: str
    customers: int
    partitions: int
    lateness_ms: int
    mix: Mix = field(default_factory=Mix)
    seed: int = 31
    tally: Tally = field(default_factory=Tally)
    # (customer, hour start in unix seconds) -> units that must be counted
    oracle: Counter[tuple[int, int]] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        weights = [1 / (rank + 1) ** ZIPF_EXPONENT for rank in range(self.customers)]
        self.cum_weights = list(itertools.accumulate(weights))
        self.population = range(self.customers)
        self.watermark: list[int | None] = [None] * self.customers  # as of the previous tick
        self._recent: list[tuple[int, bytes]] = []  # the previous tick's counted events, for duplicates
        self._seq = 0

    def customer_ref(self, customer: int) -> str:
        return f"c{customer}"

    def tick(self, events: int, from_ms: int, to_ms: int, span_start_ms: int) -> Tick:
        """``events`` events of event time ``from_ms .. to_ms`` (the cycle's present)."""
        by_partition: dict[int, list[tuple[int, bytes]]] = {}
        raised: dict[int, int] = {}
        counted_now: list[tuple[int, bytes]] = []
        floor_ms = max(span_start_ms, from_ms - LATE_FLOOR_MS)
        picks = self.rng.choices(self.population, cum_weights=self.cum_weights, k=events)
        for customer in picks:
            roll = self.rng.random()
            mark = self.watermark[customer]
            if roll < self.mix.duplicates and self._recent:
                dup_customer, encoded = self._recent[self.rng.randrange(len(self._recent))]
                by_partition.setdefault(dup_customer % self.partitions, []).append((dup_customer, encoded))
                self.tally.duplicates += 1
                continue
            roll -= self.mix.duplicates
            ts_ms: int | None = None
            counted = True
            if mark is not None and roll < self.mix.late:
                ts_ms = mark - self.rng.randrange(HOUR_MS, LATE_SPREAD_MS)
                if ts_ms < floor_ms:
                    ts_ms = None
                else:
                    self.tally.late += 1
            elif mark is not None and roll < self.mix.late + self.mix.too_late:
                ts_ms = mark - self.lateness_ms - self.rng.randrange(2 * HOUR_MS, 2 * DAY_MS)
                if ts_ms < span_start_ms:
                    ts_ms = None
                else:
                    counted = False
                    self.tally.too_late += 1
            if ts_ms is None:  # in order: the cycle's present
                ts_ms = self.rng.randrange(from_ms, max(to_ms, from_ms + 1))
                raised[customer] = max(raised.get(customer, ts_ms), ts_ms)
            quantity = self.rng.randint(1, MAX_QUANTITY)
            encoded = self._event(customer, ts_ms, quantity)
            by_partition.setdefault(customer % self.partitions, []).append((customer, encoded))
            if counted:
                self.oracle[(customer, ts_ms // HOUR_MS * HOUR_S)] += quantity
                self.tally.counted += 1
                self.tally.units += quantity
                counted_now.append((customer, encoded))
        for customer, ts_ms in raised.items():
            mark = self.watermark[customer]
            self.watermark[customer] = ts_ms if mark is None else max(mark, ts_ms)
        self._recent = counted_now
        self.tally.sent += events
        api = [e for items in by_partition.values() for c, e in items if c % API_EVERY == API_EVERY - 1]
        kafka = {
            p: _messages([e for c, e in items if c % API_EVERY != API_EVERY - 1])
            for p, items in by_partition.items()
        }
        return Tick({p: m for p, m in kafka.items() if m}, api)

    def _event(self, customer: int, ts_ms: int, quantity: int) -> bytes:
        self._seq += 1
        return orjson.dumps(
            {
                "tenantId": self.tenant,
                "metric": "requests",
                "customerRef": self.customer_ref(customer),
                "quantity": quantity,
                "ts": iso_ms(ts_ms),
                "idempotencyKey": f"e{self._seq}",
            }
        )

    def oracle_micros(self) -> dict[tuple[str, int], int]:
        """The oracle by (customer ref, hour start), in micro-units as the counters hold them."""
        return {(self.customer_ref(c), hour): units * MICROS for (c, hour), units in self.oracle.items()}


def _messages(events: list[bytes]) -> list[bytes]:
    return [b"[" + b",".join(events[i : i + PER_MESSAGE]) + b"]" for i in range(0, len(events), PER_MESSAGE)]
