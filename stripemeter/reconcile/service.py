"""Wiring reconciliation to the outside: a Reconciler from Settings, drift records to Kafka, and the
scheduled runs a worker makes (one worker at a time: a PostgreSQL advisory lock elects it)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime, timedelta

import psycopg
from aiokafka import AIOKafkaProducer

from stripemeter.config import Settings
from stripemeter.db import reconciliation as db
from stripemeter.reconcile import periods
from stripemeter.reconcile.runner import (
    Publish,
    Reconciler,
    ReconcileSettings,
    RunRequest,
)
from stripemeter.reconcile.stripe_reader import StripeReader
from stripemeter.stripe_push.budget import StripeBudget
from stripemeter.stripe_push.client import make_client

log = logging.getLogger(__name__)

SCHEDULE_LOCK = "stripemeter-reconcile-schedule"


def kafka_publisher(producer: AIOKafkaProducer, topic: str) -> Publish:
    async def publish(records: list[bytes]) -> None:
        sent = [await producer.send(topic, record) for record in records]
        await asyncio.gather(*sent)

    return publish


def stripe_configured(settings: Settings) -> bool:
    return bool(settings.stripe_api_key or settings.stripe_api_base)


def build_reconciler(
    settings: Settings, publish: Publish, budget: StripeBudget | None = None, concurrency: int = 8
) -> Reconciler:
    """``budget``: the process's Stripe budget, shared with its writer (a new one if None)."""
    client = make_client(settings.stripe_api_key.value or "sk_test_emulator", settings.stripe_api_base)
    budget = budget or StripeBudget(settings.stripe_calls_per_second)
    reader = StripeReader(client, budget, concurrency)
    return Reconciler(
        reader,
        publish,
        ReconcileSettings(
            epsilon=settings.reconcile_epsilon,
            settle_seconds=settings.reconcile_settle_seconds,
            invoice_grace_seconds=settings.invoice_grace_seconds,
        ),
        settings.clock,
    )


async def open_periods(
    conn: psycopg.AsyncConnection, tenant: str, now: datetime, grace_seconds: float
) -> list[str]:
    """The tenant's periods whose invoices can still change: the calendar month's and each billing
    anchor's current period, and the previous ones shortly after they closed."""
    cur = await conn.execute(
        "SELECT DISTINCT billing_anchor FROM customer_mappings WHERE tenant_id = %s", (tenant,)
    )
    anchors = [row[0] for row in await cur.fetchall()]
    return periods.open_names(now, anchors, timedelta(seconds=grace_seconds))


async def run_schedule(settings: Settings, reconciler: Reconciler, stopping: asyncio.Event) -> None:
    """Every ``reconcile_interval_seconds``: reconcile every tenant, if this worker holds the lock."""
    async with await psycopg.AsyncConnection.connect(settings.database_url.value, autocommit=True) as conn:
        while not stopping.is_set():
            cur = await conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (SCHEDULE_LOCK,))
            row = await cur.fetchone()
            if row and row[0]:
                try:
                    await run_all(conn, reconciler)
                except Exception:
                    log.exception(
                        "scheduled reconciliation failed; next try in %.0f s",
                        settings.reconcile_interval_seconds,
                    )
                finally:
                    await conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (SCHEDULE_LOCK,))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), settings.reconcile_interval_seconds)


async def run_all(conn: psycopg.AsyncConnection, reconciler: Reconciler) -> None:
    now = reconciler.clock.utc()
    started = time.perf_counter()
    tenants = await db.tenants(conn, now - timedelta(days=70))
    for tenant in tenants:
        await reconcile_tenant(conn, reconciler, tenant, now)
    log.info(
        "scheduled reconciliation of %d tenants done in %.1f s", len(tenants), time.perf_counter() - started
    )


async def reconcile_tenant(
    conn: psycopg.AsyncConnection, reconciler: Reconciler, tenant: str, now: datetime
) -> list[str]:
    """A scheduled run of one tenant: every period whose invoice can still change. Returns them."""
    wanted = await open_periods(conn, tenant, now, reconciler.settings.invoice_grace_seconds)
    for period in wanted:
        await reconciler.run(conn, RunRequest(tenant, period=period, trigger="schedule", only_open=True))
    return wanted
