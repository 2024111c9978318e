"""Scheduled passes read Stripe for what changed, plus a rolling sweep (docs/reconciliation.md): an item
changed locally is read in the next pass, a drift made in Stripe alone is found within the sweep
period, a change of the sweep period applies to the items that exist, and every item is read in the
closing window before its period ends. The clock is injected: passes are 15 minutes apart on it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest_asyncio
from aiohttp.test_utils import TestServer

from stripemeter.adapters.postgres import reconciliation as db
from stripemeter.domain.config import Settings
from stripemeter.services.reconciliation.build import build_reconciler
from stripemeter.services.reconciliation.run import Reconciler
from stripemeter.services.reconciliation.schedule import reconcile_tenant
from stripemeter.tools.stripe_emulator import EmulatorState, create_app
from tests.integration.harness import free_port
from tests.integration.stripe_helpers import emulator_settings
from tests.integration.test_reconcile_schedule import AppClock, no_publish

INTERVAL = 900.0
HOUR = 3600
START = datetime(2026, 12, 10, 12, tzinfo=UTC)  # mid-month: the period's end is far
UNITS = 1000
PERIOD = "2026-12"  # the seeded hour's


@dataclass
class World:
    state: EmulatorState
    clock: AppClock
    base: str
    conn: psycopg.AsyncConnection
    tenant: str
    event_name: str
    customers: dict[str, str]  # customer ref -> Stripe customer id
    hour: datetime  # the one settled hour each customer has

    def reconciler(self, env: Settings, **overrides: Any) -> Reconciler:
        settings = env.with_overrides(
            **emulator_settings(self.base), reconcile_interval_seconds=INTERVAL, reconcile_settle_seconds=0,
            **overrides,
        )  # fmt: skip
        reconciler = build_reconciler(settings, no_publish)
        reconciler.clock = self.clock  # type: ignore[assignment]  # the application's clock, moved by hand
        return reconciler

    async def scheduled_pass(self, reconciler: Reconciler) -> set[str]:
        """One scheduled pass over the tenant at the clock's time; returns the customers whose item of
        the seeded hour's period it read."""
        before = self.clock.utc()
        await reconcile_tenant(self.conn, reconciler, self.tenant, before)
        cur = await self.conn.execute(
            "SELECT customer_ref FROM reconciliation_proofs WHERE tenant_id = %s AND period = %s"
            " AND read_at = %s",
            (self.tenant, PERIOD, before),
        )
        return {row[0] for row in await cur.fetchall()}

    async def status(self, customer: str) -> str:
        cur = await self.conn.execute(
            "SELECT status FROM reconciliation_latest WHERE tenant_id = %s AND customer_ref = %s"
            " AND period = %s",
            (self.tenant, customer, PERIOD),
        )
        row = await cur.fetchone()
        assert row is not None
        return str(row[0])

    def stripe_event(self, customer: str, value: int, identifier: str | None = None) -> None:
        self.state.record_meter_event(
            {
                "event_name": self.event_name,
                "payload": {"stripe_customer_id": self.customers[customer], "value": str(value)},
                "timestamp": str(int(self.hour.timestamp()) + 60),
                "identifier": identifier or uuid.uuid4().hex,
            }
        )

    async def count_locally(self, customer: str, units: int) -> None:
        """``units`` more counted in the customer's hour and delivered by the writer (Stripe has it)."""
        now = self.clock.utc()
        await self.conn.execute(
            "UPDATE counters SET total_micros = total_micros + %s, seq = seq + 1, updated_at = %s"
            " WHERE tenant_id = %s AND customer_ref = %s",
            (units * 1_000_000, now, self.tenant, customer),
        )
        await self.conn.execute(
            "UPDATE stripe_pushes SET latest_micros = latest_micros + %s, latest_seq = latest_seq + 1,"
            " pushed_units = pushed_units + %s, version = version + 1, updated_at = %s"
            " WHERE tenant_id = %s AND customer_ref = %s",
            (units * 1_000_000, units, now, self.tenant, customer),
        )
        self.stripe_event(customer, units)


@pytest_asyncio.fixture
async def world(env: Settings) -> AsyncIterator[World]:
    clock = AppClock(START.timestamp())
    state = EmulatorState(clock, ops_per_second=0)  # not about Stripe's rate limit
    server = TestServer(create_app(state), host="127.0.0.1", port=free_port())
    await server.start_server()
    tenant = f"inc-{uuid.uuid4().hex[:6]}"
    event_name = f"req_{uuid.uuid4().hex[:8]}"
    state.create_meter(
        {"display_name": "r", "event_name": event_name, "default_aggregation": {"formula": "sum"}}
    )
    hour = START - timedelta(hours=3)
    async with await psycopg.AsyncConnection.connect(env.database_url.value, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO metric_mappings (tenant_id, metric, stripe_meter_event_name, aggregation)"
            " VALUES (%s, 'requests', %s, 'sum')",
            (tenant, event_name),
        )
        customers = {}
        for n in range(48):
            ref = f"c{n:02d}"
            customers[ref] = state.create_customer({"email": f"{ref}@example.com"})["id"]
            await conn.execute(
                "INSERT INTO customer_mappings (tenant_id, customer_ref, stripe_customer_id)"
                " VALUES (%s, %s, %s)",
                (tenant, ref, customers[ref]),
            )
            changed = hour + timedelta(minutes=70)
            await conn.execute(
                "INSERT INTO counters (tenant_id, metric, customer_ref, bucket, total_micros, seq,"
                " updated_at) VALUES (%s, 'requests', %s, %s, %s, 1, %s)",
                (tenant, ref, hour, UNITS * 1_000_000, changed),
            )
            await conn.execute(
                "INSERT INTO stripe_pushes (tenant_id, metric, customer_ref, bucket, latest_micros,"
                " latest_seq, pushed_units, status, updated_at)"
                " VALUES (%s, 'requests', %s, %s, %s, 1, %s, 'synced', %s)",
                (tenant, ref, hour, UNITS * 1_000_000, UNITS, changed),
            )
        world = World(
            state, clock, str(server.make_url("")).rstrip("/"), conn, tenant, event_name, customers, hour
        )
        for ref in customers:
            world.stripe_event(ref, UNITS, f"seed-{ref}")
        yield world
    await server.close()


async def test_a_local_change_is_read_in_the_next_pass_and_nothing_else_is(
    env: Settings, world: World
) -> None:
    reconciler = world.reconciler(env, reconcile_sweep_seconds=86400, reconcile_closing_seconds=0)
    assert await world.scheduled_pass(reconciler) == set(world.customers)  # never read: all of them
    world.clock.advance(INTERVAL)
    await world.count_locally("c07", 5)
    read = await world.scheduled_pass(reconciler)
    # c07 changed; the sweep's share of a day is 48 x 900 / 85,500 items a pass: none or one or two
    assert "c07" in read and len(read) <= 4, read
    assert await world.status("c07") == "parity"
    world.clock.advance(INTERVAL)
    again = await world.scheduled_pass(reconciler)
    assert "c07" not in again and len(again) <= 3, again  # proven at its new total: left alone


async def test_a_drift_made_in_stripe_alone_is_found_within_the_sweep_period(
    env: Settings, world: World
) -> None:
    """Nothing changes locally; Stripe gets a foreign event (or loses one): the sweep reads the item
    within the sweep period, and each pass reads its even share."""
    sweep = 4 * HOUR
    reconciler = world.reconciler(env, reconcile_sweep_seconds=sweep, reconcile_closing_seconds=0)
    await world.scheduled_pass(reconciler)
    world.clock.advance(60)
    drifted_at = world.clock()
    world.stripe_event("c11", 300)  # someone else's meter event: Stripe bills 1,300
    world.clock.advance(INTERVAL - 60)
    reads: list[set[str]] = []
    found_at = None
    while world.clock() - drifted_at <= sweep:
        reads.append(await world.scheduled_pass(reconciler))
        if "c11" in reads[-1] and found_at is None:
            found_at = world.clock()
            assert await world.status("c11") == "drift"
        world.clock.advance(INTERVAL)
    assert found_at is not None and found_at - drifted_at <= sweep
    swept = [r - {"c11"} for r in reads]
    assert set().union(*swept) | {"c11"} == set(world.customers)  # every item read within the period
    assert max(len(r) for r in swept) <= 12, [len(r) for r in swept]  # 48 / 14 passes: about 3.4 a pass


async def test_a_shorter_or_longer_sweep_applies_to_the_items_that_exist(env: Settings, world: World) -> None:
    await world.scheduled_pass(
        world.reconciler(env, reconcile_sweep_seconds=86400, reconcile_closing_seconds=0)
    )
    world.clock.advance(INTERVAL)
    shorter = world.reconciler(env, reconcile_sweep_seconds=HOUR, reconcile_closing_seconds=0)
    changed_at = world.clock()
    seen: set[str] = set()
    while world.clock() - changed_at < HOUR:
        seen |= await world.scheduled_pass(shorter)
        world.clock.advance(INTERVAL)
    assert seen == set(world.customers)  # each item read within the new hour
    # ... and each again within the next hour, no more often than the new cadence asks
    again: list[set[str]] = []
    while world.clock() - changed_at < 2 * HOUR:
        again.append(await world.scheduled_pass(shorter))
        world.clock.advance(INTERVAL)
    assert set().union(*again) == set(world.customers)
    assert sum(len(r) for r in again) <= 2 * len(world.customers)
    longer = world.reconciler(env, reconcile_sweep_seconds=86400, reconcile_closing_seconds=0)
    after = await world.scheduled_pass(longer)
    assert len(after) <= 8, after  # read less than an hour ago, their daily turn mostly far
    await world.count_locally("c20", 1)  # a change a moment after the setting's: read as ever
    world.clock.advance(INTERVAL)
    assert "c20" in await world.scheduled_pass(longer)


async def test_every_item_is_read_in_the_window_before_its_period_ends(env: Settings, world: World) -> None:
    """The items exist, proven three hours before the end with no closing window; the window is turned
    on (two hours): every item is read in it, a change a moment after the setting's in the next pass."""
    period_end = datetime(2027, 1, 1, tzinfo=UTC).timestamp()
    world.clock.now = period_end - 3 * HOUR
    await world.scheduled_pass(world.reconciler(env, reconcile_closing_seconds=0))
    reconciler = world.reconciler(env, reconcile_sweep_seconds=86400, reconcile_closing_seconds=2 * HOUR)
    await world.count_locally("c30", 2)
    world.clock.advance(INTERVAL)
    assert "c30" in await world.scheduled_pass(reconciler)
    world.clock.advance(INTERVAL)
    in_window: set[str] = set()
    while world.clock() < period_end:
        read = await world.scheduled_pass(reconciler)
        if world.clock() >= period_end - 2 * HOUR:
            in_window |= read
        world.clock.advance(INTERVAL)
    assert in_window == set(world.customers)
    after_end = await world.scheduled_pass(reconciler)  # proven in the window, unchanged since
    assert len(after_end) <= 3, after_end


async def test_a_correction_stripe_reports_dropped_is_read_in_the_next_pass(
    env: Settings, world: World
) -> None:
    """c05 is one unit short in Stripe: the first pass corrects it, the next proves it. Stripe then
    reports the correction dropped (its asynchronous error report): nothing else changed locally and its
    sweep turn is weeks away, yet the next pass reads it, finds it short again and corrects it."""
    reconciler = world.reconciler(env, reconcile_sweep_seconds=30 * 86400, reconcile_closing_seconds=0)
    world.stripe_event("c05", -1)
    await world.scheduled_pass(reconciler)
    assert await world.status("c05") == "within_epsilon"  # corrected by one unit
    world.clock.advance(INTERVAL)
    assert "c05" in await world.scheduled_pass(reconciler)  # a correction is proven by the next read
    assert await world.status("c05") == "parity"
    world.clock.advance(INTERVAL)
    assert "c05" not in await world.scheduled_pass(reconciler)
    cur = await world.conn.execute(
        "SELECT adjustment_id FROM adjustments WHERE tenant_id = %s AND customer_ref = 'c05'", (world.tenant,)
    )
    (identifier,) = [row[0] for row in await cur.fetchall()]
    assert await db.drop_correction(world.conn, identifier, "meter event dropped", world.clock.utc())
    world.stripe_event("c05", -1)  # what Stripe holds without it
    world.clock.advance(INTERVAL)
    assert "c05" in await world.scheduled_pass(reconciler)
    assert await world.status("c05") == "within_epsilon"
