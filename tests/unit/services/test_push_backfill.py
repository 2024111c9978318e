"""Push rows from the counters table (services/push_backfill.py), without PostgreSQL: passes in batches,
one every interval, a batch PostgreSQL gave up read again."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from stripemeter.adapters.postgres.push_totals import CounterKey, CounterRow, Latest
from stripemeter.domain.clock import Clock
from stripemeter.services import push_backfill
from stripemeter.services.push_backfill import CounterBackfill

NOW = datetime(2026, 11, 20, 15, 30, tzinfo=UTC)


@dataclass(frozen=True)
class SetClock(Clock):
    at: list[float] = field(default_factory=lambda: [NOW.timestamp()])

    def __call__(self) -> float:
        return self.at[0]


class FakePushTotals:
    def __init__(self, rows: list[CounterRow]):
        self.rows = sorted(rows, key=lambda r: r.scan_key)
        self.recorded: list[Latest] = []
        self.reads: list[CounterKey] = []
        self.fail = 0  # record_latest calls that PostgreSQL gives up

    async def counters_after(
        self, conn: Any, app_id: str, oldest: datetime, after: CounterKey, limit: int
    ) -> list[CounterRow]:
        self.reads.append(after)
        return [r for r in self.rows if r.scan_key > after and r.bucket >= oldest][:limit]

    async def anchors(self, conn: Any, customers: Any) -> dict[tuple[str, str], datetime | None]:
        return {pair: None for pair in customers}

    async def record_latest(self, conn: Any, latest: list[Latest], now: datetime) -> None:
        if self.fail:
            self.fail -= 1
            raise psycopg.errors.DeadlockDetected()
        self.recorded.extend(latest)


def counter(customer: str, hours_ago: int, seq: int = 2, pushed: int | None = None) -> CounterRow:
    bucket = NOW.replace(minute=0) - timedelta(hours=hours_ago)
    return CounterRow("t", "m", customer, bucket, 1_000_000, seq, pushed)


async def test_a_pass_goes_in_batches_and_the_next_waits_its_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rows = [counter("a", 3), counter("b", 3, pushed=2), counter("c", 2, pushed=1), counter("d", 1)]
    rows.append(counter("old", 36 * 24))  # older than Stripe takes: not read
    fake = FakePushTotals(rows)
    monkeypatch.setattr(push_backfill, "push_totals", fake)
    clock = SetClock()
    backfill = CounterBackfill("app", clock, batch=2, interval_s=600)
    partition_of = {"t|m|a": 1, "t|m|c": 0, "t|m|d": 3}.__getitem__

    assert await backfill.step(None, partition_of) == 1  # type: ignore[arg-type]  # a and b: b is up to date
    assert await backfill.step(None, partition_of) == 2  # type: ignore[arg-type]  # c (an older seq), d
    assert await backfill.step(None, partition_of) == 0  # type: ignore[arg-type]  # the pass is over
    assert [(r.customer_ref, r.partition, r.app_id, r.period_start) for r in fake.recorded] == [
        ("a", 1, "app", datetime(2026, 11, 1, tzinfo=UTC)),
        ("c", 0, "app", datetime(2026, 11, 1, tzinfo=UTC)),
        ("d", 3, "app", datetime(2026, 11, 1, tzinfo=UTC)),
    ]
    reads = len(fake.reads)
    clock.at[0] += 599
    assert await backfill.step(None, partition_of) == 0  # type: ignore[arg-type]
    assert len(fake.reads) == reads  # no pass due yet: nothing read
    clock.at[0] += 1
    assert await backfill.step(None, partition_of) == 1  # type: ignore[arg-type]  # a new pass
    assert len(fake.reads) == reads + 1


async def test_a_batch_postgresql_gave_up_is_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakePushTotals([counter("a", 2), counter("b", 1)])
    fake.fail = 1
    monkeypatch.setattr(push_backfill, "push_totals", fake)
    backfill = CounterBackfill("app", SetClock(), batch=1)
    with pytest.raises(psycopg.errors.DeadlockDetected):
        await backfill.step(None, lambda key: 0)  # type: ignore[arg-type]
    assert await backfill.run_pass(None, lambda key: 0) == 2  # type: ignore[arg-type]
    assert [r.customer_ref for r in fake.recorded] == ["a", "b"]


async def test_the_first_pass_takes_more_batches_a_round_than_the_later_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A writer's first pass is done in a few rounds (its pushes go on between them); later passes take
    one batch a round."""
    fake = FakePushTotals([counter(f"c{i:02d}", 1) for i in range(25)])
    monkeypatch.setattr(push_backfill, "push_totals", fake)
    clock = SetClock()
    backfill = CounterBackfill("app", clock, batch=1, interval_s=600)
    made = [await backfill.round(None, lambda key: 0) for _ in range(3)]  # type: ignore[arg-type]
    assert made == [10, 10, 5] and backfill.passes == 1
    clock.at[0] += 600
    assert await backfill.round(None, lambda key: 0) == 1  # type: ignore[arg-type]
