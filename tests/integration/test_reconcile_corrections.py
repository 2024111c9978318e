"""A reconciliation correction Stripe did not clearly answer is resent under its own identifier, never
replaced by a second one: a 500 may have landed (Stripe's summaries show it only later), so its hour
stays in flight until Stripe confirms it; a refusal (4xx) did not land; and a correction unanswered for
longer than Stripe keeps identifiers is never sent blindly again."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest_asyncio
from aiohttp.test_utils import TestServer
from psycopg.rows import dict_row

from stripemeter.adapters.postgres import reconciliation as db
from stripemeter.adapters.stripe.client import SendResult
from stripemeter.core.push_plan import Request
from stripemeter.domain.config import Settings
from stripemeter.services.reconciliation.build import build_reconciler
from stripemeter.services.reconciliation.request import RunRequest
from stripemeter.services.reconciliation.run import Reconciler
from stripemeter.tools.stripe_emulator import EmulatorState, create_app
from stripemeter.tools.stripe_emulator.manual_clock import ManualClock
from tests.integration.harness import free_port
from tests.integration.stripe_helpers import emulator_settings
from tests.integration.test_reconcile_schedule import no_publish, seed, stripe_holds

START = datetime(2026, 12, 10, 12, tzinfo=UTC)
SUMMARY_DELAY = 600.0  # Stripe's summaries show an event 10 minutes after it landed
SETTLE = 300.0


class AppClock(ManualClock):
    """One manual clock for the emulator and the reconciler."""

    def utc(self) -> datetime:
        return datetime.fromtimestamp(self.now, tz=UTC)


@pytest_asyncio.fixture
async def world(env: Settings) -> AsyncIterator[tuple[EmulatorState, AppClock, Reconciler]]:
    clock = AppClock(START.timestamp())
    state = EmulatorState(clock, ops_per_second=0)
    state.faults.update({"summary_delay": SUMMARY_DELAY})
    server = TestServer(create_app(state), host="127.0.0.1", port=free_port())
    await server.start_server()
    base = str(server.make_url("")).rstrip("/")
    settings = env.with_overrides(**emulator_settings(base), reconcile_settle_seconds=SETTLE)
    reconciler = build_reconciler(settings, no_publish)
    reconciler.clock = clock  # type: ignore[assignment]
    yield state, clock, reconciler
    await server.close()


async def corrections(conn: psycopg.AsyncConnection, tenant: str) -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "SELECT adjustment_id, status, error, delta_micros FROM adjustments"
        " WHERE tenant_id = %s AND target = 'stripe' ORDER BY created_at",
        (tenant,),
    )
    return await cur.fetchall()


async def reconcile(conn: psycopg.AsyncConnection, reconciler: Reconciler, tenant: str) -> dict[str, Any]:
    return await reconciler.run(conn, RunRequest(tenant, period="2026-12", trigger="test"))


def correction_events(state: EmulatorState, customer_id: str) -> list[str]:
    return [
        e.identifier
        for meter in state.meters
        for e in state.meter_events(meter)
        if e.customer == customer_id and e.identifier.startswith("smrec_")
    ]


async def test_a_correction_answered_500_that_landed_is_resent_under_its_identifier_not_doubled(
    env: Settings, world: tuple[EmulatorState, AppClock, Reconciler]
) -> None:
    state, clock, reconciler = world
    tenant = f"rc-{uuid.uuid4().hex[:6]}"
    async with await psycopg.AsyncConnection.connect(env.database_url.value, autocommit=True) as conn:
        # a delivered hour of 1,000 units; Stripe holds 999 (seen in its summaries after an hour)
        customer_id = await seed(conn, state, tenant, START - timedelta(hours=3), None)
        clock.advance(3600)
        state.faults.update({"landed_server_errors": 1, "path_prefix": "/v1/billing/meter_events"})
        first = await reconcile(conn, reconciler, tenant)
        assert first["items"][0]["status"] == "within_epsilon" and first["adjusted"] == []
        [row] = await corrections(conn, tenant)
        assert row["status"] == "pending"  # a 500 may have landed: not failed, not forgotten
        assert correction_events(state, customer_id) == [row["adjustment_id"]]  # ... and it did
        # what the writer's 24 h check reads for the hour: maybe +1, surely nothing yet
        hour = (tenant, "requests", "c", START - timedelta(hours=3))
        assert await db.uncertain_corrections(conn, hour) == [1]
        assert await db.delivered_corrections(conn, hour) == 0

        # settled past the settle time, but Stripe's summaries do not show the correction yet
        clock.advance(SETTLE + 60)
        second = await reconcile(conn, reconciler, tenant)
        assert second["adjusted"] == []
        rows = await corrections(conn, tenant)
        assert [(r["adjustment_id"], r["status"]) for r in rows] == [(row["adjustment_id"], "applied")]
        assert second["items"][0]["inFlight"] == 1 and second["items"][0]["status"] == "parity"
        assert await db.uncertain_corrections(conn, hour) == []
        assert await db.delivered_corrections(conn, hour) == 1

        clock.advance(SUMMARY_DELAY)
        third = await reconcile(conn, reconciler, tenant)
        assert third["items"][0]["status"] == "parity" and third["items"][0]["inFlight"] == 0
    assert stripe_holds(state, customer_id) == 1000
    assert correction_events(state, customer_id) == [row["adjustment_id"]]


async def test_an_unanswered_correction_keeps_its_hour_in_flight_and_is_resent_with_a_new_key(
    env: Settings, world: tuple[EmulatorState, AppClock, Reconciler]
) -> None:
    """A 500 before anything landed: the next run resends the recorded request (a new idempotency key,
    since Stripe replays the 500 to the old one) and no second correction is planned meanwhile."""
    state, clock, reconciler = world
    tenant = f"rc-{uuid.uuid4().hex[:6]}"
    async with await psycopg.AsyncConnection.connect(env.database_url.value, autocommit=True) as conn:
        customer_id = await seed(conn, state, tenant, START - timedelta(hours=3), None)
        clock.advance(3600)
        state.faults.update({"server_errors": 2, "path_prefix": "/v1/billing/meter_events"})
        await reconcile(conn, reconciler, tenant)
        clock.advance(SETTLE + SUMMARY_DELAY)
        second = await reconcile(conn, reconciler, tenant)  # the resend gets the second 500
        assert second["adjusted"] == [] and second["items"][0]["inFlight"] == 1
        [row] = await corrections(conn, tenant)
        assert row["status"] == "pending" and correction_events(state, customer_id) == []
        clock.advance(60)
        await reconcile(conn, reconciler, tenant)
        assert [(r["adjustment_id"], r["status"]) for r in await corrections(conn, tenant)] == [
            (row["adjustment_id"], "applied")
        ]
        clock.advance(SETTLE + SUMMARY_DELAY)
        last = await reconcile(conn, reconciler, tenant)
        assert last["items"][0]["status"] == "parity" and last["items"][0]["inFlight"] == 0
    assert stripe_holds(state, customer_id) == 1000
    assert correction_events(state, customer_id) == [row["adjustment_id"]]


async def test_a_refused_correction_did_not_land_and_does_not_hold_its_hour(
    env: Settings, world: tuple[EmulatorState, AppClock, Reconciler]
) -> None:
    state, clock, reconciler = world
    tenant = f"rc-{uuid.uuid4().hex[:6]}"
    async with await psycopg.AsyncConnection.connect(env.database_url.value, autocommit=True) as conn:
        customer_id = await seed(conn, state, tenant, START - timedelta(hours=3), None)
        clock.advance(3600)
        send = reconciler.reader.send

        async def refuse(request: Request, attempt: int = 0) -> SendResult:
            return SendResult("refused", "No such customer: 'cus_x'")  # a 400: it did not land

        reconciler.reader.send = refuse  # type: ignore[method-assign]
        first = await reconcile(conn, reconciler, tenant)
        reconciler.reader.send = send  # type: ignore[method-assign]
        assert first["items"][0]["action"] == "replay"
        [refused] = await corrections(conn, tenant)
        assert refused["status"] == "failed" and refused["error"]
        clock.advance(SETTLE + 1)
        second = await reconcile(conn, reconciler, tenant)  # not in flight: a new correction
        assert len(second["adjusted"]) == 1
    assert stripe_holds(state, customer_id) == 1000


async def test_a_correction_unanswered_beyond_stripes_identifier_window_is_not_sent_again(
    env: Settings, world: tuple[EmulatorState, AppClock, Reconciler]
) -> None:
    """Stripe forgets identifiers after 24 h: the old request is never resent (it might count twice);
    it is marked unknown and the hour, whose summary is long settled, is compared afresh."""
    state, clock, reconciler = world
    tenant = f"rc-{uuid.uuid4().hex[:6]}"
    async with await psycopg.AsyncConnection.connect(env.database_url.value, autocommit=True) as conn:
        customer_id = await seed(conn, state, tenant, START - timedelta(hours=3), None)
        clock.advance(3600)
        state.faults.update({"landed_server_errors": 1, "path_prefix": "/v1/billing/meter_events"})
        await reconcile(conn, reconciler, tenant)
        [row] = await corrections(conn, tenant)
        assert row["status"] == "pending"
        clock.advance(25 * 3600)  # Stripe would accept the identifier again now
        later = await reconcile(conn, reconciler, tenant)
        [old] = await corrections(conn, tenant)
        assert old["status"] == "unknown" and "24 h" in old["error"]
        # it had landed: Stripe's settled summary shows parity, nothing new is sent
        assert later["adjusted"] == [] and later["items"][0]["status"] == "parity"
    assert stripe_holds(state, customer_id) == 1000
    assert correction_events(state, customer_id) == [row["adjustment_id"]]
