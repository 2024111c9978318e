"""The scheduled reconciliation checks the period whose invoice is closing, at the instants where that
is hard: the first hours of a month and of a year, three days after a month ended, a leap month, and a
customer's own 10:45 cycle; and it makes one pass per interval however many workers run it."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer

from stripemeter.domain.clock import Clock
from stripemeter.domain.config import Settings
from stripemeter.services.reconciliation import schedule as service
from stripemeter.services.reconciliation.build import build_reconciler
from stripemeter.services.reconciliation.schedule import reconcile_tenant
from stripemeter.tools.stripe_emulator import EmulatorState, create_app
from stripemeter.tools.stripe_emulator.manual_clock import ManualClock
from tests.integration.harness import free_port
from tests.integration.stripe_helpers import emulator_settings

HOUR = timedelta(hours=1)


async def no_publish(records: list[bytes]) -> None:
    return None


@pytest_asyncio.fixture
async def emulator_at(request: pytest.FixtureRequest) -> AsyncIterator[tuple[EmulatorState, str]]:
    state = EmulatorState(Clock.starting_at(request.param), ops_per_second=0)  # not about rate limits
    server = TestServer(create_app(state), host="127.0.0.1", port=free_port())
    await server.start_server()
    yield state, str(server.make_url("")).rstrip("/")
    await server.close()


async def seed(
    conn: psycopg.AsyncConnection, state: EmulatorState, tenant: str, hour: datetime, anchor: datetime | None
) -> str:
    """A customer with one settled hour of 1,000 units, delivered; Stripe holds one unit less (a push
    it dropped): within epsilon, so a run that checks that hour's period aligns it."""
    event_name = f"req_{uuid.uuid4().hex[:8]}"
    state.create_meter(
        {"display_name": "r", "event_name": event_name, "default_aggregation": {"formula": "sum"}}
    )
    customer_id: str = state.create_customer({"email": "c@example.com"})["id"]
    await conn.execute(
        "INSERT INTO metric_mappings (tenant_id, metric, stripe_meter_event_name, aggregation)"
        " VALUES (%s, 'requests', %s, 'sum')",
        (tenant, event_name),
    )
    await conn.execute(
        "INSERT INTO customer_mappings (tenant_id, customer_ref, stripe_customer_id, billing_anchor)"
        " VALUES (%s, 'c', %s, %s)",
        (tenant, customer_id, anchor),
    )
    changed = hour + HOUR
    await conn.execute(
        "INSERT INTO counters (tenant_id, metric, customer_ref, bucket, total_micros, seq, updated_at)"
        " VALUES (%s, 'requests', 'c', %s, 1000000000, 1, %s)",
        (tenant, hour, changed),
    )
    await conn.execute(
        "INSERT INTO stripe_pushes (tenant_id, metric, customer_ref, bucket, latest_micros, latest_seq,"
        " pushed_units, status, updated_at) VALUES (%s, 'requests', 'c', %s, 1000000000, 1, 1000,"
        " 'synced', %s)",
        (tenant, hour, changed),
    )
    state.record_meter_event(
        {
            "event_name": event_name,
            "payload": {"stripe_customer_id": customer_id, "value": "999"},
            "timestamp": str(int(hour.timestamp())),
        }
    )
    return customer_id


def stripe_holds(state: EmulatorState, customer_id: str) -> int:
    events = (e for meter in state.meters for e in state.meter_events(meter))
    return sum(e.value for e in events if e.customer == customer_id)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# now; the hour the usage is in, and the period that hour belongs to; the customer's billing anchor;
# whether the schedule still checks (and so aligns) that period
CASES = [
    # 1 December, first hour: November closed 30 minutes ago, its invoice is being finalised
    (utc(2026, 12, 1, 0, 30), utc(2026, 11, 30, 23), "2026-11", None, True),
    # 2 December: the old schedule took "now - 32 days" and checked October instead
    (utc(2026, 12, 2, 0, 45), utc(2026, 11, 30, 12), "2026-11", None, True),
    # 72 hours after November closed its invoice is final: no longer checked
    (utc(2026, 12, 4, 0, 30), utc(2026, 11, 30, 23), "2026-11", None, False),
    # New Year: December of the year before
    (utc(2027, 1, 1, 1, 30), utc(2026, 12, 31, 23), "2026-12", None, True),
    # after a leap day: 29 February
    (utc(2028, 3, 1, 0, 10), utc(2028, 2, 29, 22), "2028-02", None, True),
    # a 10:45 anchor on the 15th, 45 minutes after a cycle closed: its 10:00 hour is the old cycle's
    (utc(2026, 12, 15, 11, 30), utc(2026, 12, 15, 10), "2026-11", utc(2026, 1, 15, 10, 45), True),
    # an anchor on the 31st in February: the cycle closed on the 28th at 13:45
    (utc(2027, 3, 1, 9), utc(2027, 2, 28, 13), "2027-01", utc(2026, 1, 31, 13, 45), True),
]


@pytest.mark.parametrize(
    ("emulator_at", "hour", "period", "anchor", "checked"), CASES, indirect=["emulator_at"]
)
async def test_the_schedule_reconciles_the_previous_period_while_its_invoice_can_change(
    env: Settings,
    emulator_at: tuple[EmulatorState, str],
    hour: datetime,
    period: str,
    anchor: datetime | None,
    checked: bool,
) -> None:
    state, base = emulator_at
    clock = state.clock
    assert isinstance(clock, Clock)
    settings = env.with_overrides(
        **emulator_settings(base), clock_offset_seconds=clock.offset_seconds, reconcile_settle_seconds=0
    )
    tenant = f"sc-{uuid.uuid4().hex[:6]}"
    async with await psycopg.AsyncConnection.connect(settings.database_url.value, autocommit=True) as conn:
        customer_id = await seed(conn, state, tenant, hour, anchor)
        checked_periods = await reconcile_tenant(
            conn, build_reconciler(settings, no_publish), tenant, clock.utc()
        )
    assert (period in checked_periods) == checked, checked_periods
    # aligned (+1) where the schedule looked, untouched where the invoice is final
    assert stripe_holds(state, customer_id) == (1000 if checked else 999)


class AppClock(ManualClock):
    def utc(self) -> datetime:
        return datetime.fromtimestamp(self.now, tz=UTC)


Passes = list[tuple[str, float]]


def recording_passes(monkeypatch: pytest.MonkeyPatch, names: dict[int, str]) -> Passes:
    """Replace the pass's work (reconciling every tenant of a shared database) by a note of who made
    it and when: these tests are about how often it happens."""
    passes: Passes = []

    async def run_all(conn: psycopg.AsyncConnection, reconciler: Any, now: datetime | None = None) -> None:
        passes.append((names[id(reconciler)], reconciler.clock()))

    monkeypatch.setattr(service, "run_all", run_all)
    return passes


async def forget_passes(settings: Settings) -> None:
    async with await psycopg.AsyncConnection.connect(settings.database_url.value, autocommit=True) as conn:
        await conn.execute("DELETE FROM reconciliation_schedule")


async def test_one_scheduled_pass_per_interval_across_workers(
    env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers' schedules on one database with staggered timers: one pass per interval in all, made
    by whichever worker finds it due; a worker never starts one while another's is running."""
    interval = 900.0
    clock = AppClock(utc(2026, 12, 10, 12).timestamp())
    a, b = build_reconciler(env, no_publish), build_reconciler(env, no_publish)
    a.clock = b.clock = clock  # type: ignore[assignment]
    passes = recording_passes(monkeypatch, {id(a): "a", id(b): "b"})
    await forget_passes(env)
    start = clock.now
    url = env.database_url.value
    async with (
        await psycopg.AsyncConnection.connect(url, autocommit=True) as conn_a,
        await psycopg.AsyncConnection.connect(url, autocommit=True) as conn_b,
    ):
        assert await service.scheduled_pass(conn_a, a, interval, "a") == pytest.approx(interval)
        clock.advance(interval / 2)
        # b's timer: a pass started half an interval ago; the next is due in the other half
        assert await service.scheduled_pass(conn_b, b, interval, "b") == pytest.approx(interval / 2)
        clock.advance(interval / 2)
        assert await service.scheduled_pass(conn_b, b, interval, "b") == pytest.approx(interval)
        clock.advance(interval / 3)
        assert await service.scheduled_pass(conn_a, a, interval, "a") == pytest.approx(interval * 2 / 3)
        clock.advance(interval * 2 / 3 + 1)

        # a's pass is due and running when b's timer fires past its due time too: b waits a little
        async def a_pass_that_b_interrupts(conn: Any, reconciler: Any, now: Any = None) -> None:
            passes.append(("a", reconciler.clock()))
            clock.advance(interval + 1)
            wait = await service.scheduled_pass(conn_b, b, interval, "b")
            assert wait == service.RECHECK_SECONDS

        monkeypatch.setattr(service, "run_all", a_pass_that_b_interrupts)
        await service.scheduled_pass(conn_a, a, interval, "a")
    assert passes == [("a", start), ("b", start + interval), ("a", start + 2 * interval + 1)]


async def test_staggered_workers_make_one_pass_per_interval_in_real_time(
    env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    interval = 1.0
    settings = env.with_overrides(reconcile_interval_seconds=interval)
    a, b = build_reconciler(settings, no_publish), build_reconciler(settings, no_publish)
    passes = recording_passes(monkeypatch, {id(a): "a", id(b): "b"})
    await forget_passes(settings)
    stopping = asyncio.Event()
    first = asyncio.create_task(service.run_schedule(settings, a, stopping))
    await asyncio.sleep(interval / 2)
    second = asyncio.create_task(service.run_schedule(settings, b, stopping))
    await asyncio.sleep(3 * interval - 0.3)
    stopping.set()
    await asyncio.gather(first, second)
    starts = [at for _, at in passes]
    assert len(passes) in (3, 4), passes
    # passes are spaced by their claims; a pass is recorded a database round trip after its claim,
    # which varies by milliseconds on a loaded machine (a second pass in one interval would be ~0 s apart)
    assert all(later - earlier >= interval - 0.05 for earlier, later in itertools.pairwise(starts)), passes
