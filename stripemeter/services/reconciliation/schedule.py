"""The scheduled runs: every worker runs the schedule, one pass per interval happens across all of them
(a PostgreSQL advisory lock and the last pass's start in ``reconciliation_schedule``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from datetime import datetime, timedelta

import psycopg

from stripemeter.adapters.postgres import locks
from stripemeter.adapters.postgres import reconciliation as db
from stripemeter.domain import metrics, periods
from stripemeter.domain.config import Settings
from stripemeter.domain.errors import Busy
from stripemeter.services.reconciliation.request import RunRequest
from stripemeter.services.reconciliation.run import Reconciler

log = logging.getLogger(__name__)

SCHEDULE_LOCK = "stripemeter-reconcile-schedule"
RECHECK_SECONDS = 5.0  # how often a worker looks again while another one's pass is overdue


async def open_periods(
    conn: psycopg.AsyncConnection, tenant: str, now: datetime, grace_seconds: float
) -> list[str]:
    """The tenant's periods whose invoices can still change: the calendar month's and each billing
    anchor's current period, and the previous ones shortly after they closed."""
    anchors = await db.billing_anchors(conn, tenant)
    return periods.open_names(now, anchors, timedelta(seconds=grace_seconds))


async def run_schedule(settings: Settings, reconciler: Reconciler, stopping: asyncio.Event) -> None:
    """Every worker runs this; across all of them one pass reconciles every tenant once per
    ``reconcile_interval_seconds`` (see ``scheduled_pass``)."""
    interval = settings.reconcile_interval_seconds
    worker = f"{socket.gethostname()}:{os.getpid()}"
    async with await psycopg.AsyncConnection.connect(settings.database_url.value, autocommit=True) as conn:
        while not stopping.is_set():
            wait = await scheduled_pass(conn, reconciler, interval, worker)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), wait)


async def scheduled_pass(
    conn: psycopg.AsyncConnection, reconciler: Reconciler, interval: float, worker: str
) -> float:
    """One turn of a worker's schedule: the pass, when this worker holds the schedule's lock (passes
    never overlap) and no worker started one within the interval (the last start is in PostgreSQL, on
    the application's clock). Returns the seconds to wait until the next pass is due."""
    async with locks.held_if_free(conn, SCHEDULE_LOCK) as got:
        if got:  # else another worker makes the pass
            now = reconciler.clock.utc()
            if await db.claim_scheduled_pass(conn, now, interval, worker):
                try:
                    await run_all(conn, reconciler, now)
                    metrics.RECONCILIATION_LAST_PASS.set(time.time())  # wall time: Prometheus compares it
                except Exception:
                    log.exception("scheduled reconciliation failed; next try in %.0f s", interval)
    last = await db.last_scheduled_pass(conn)
    if last is None:
        return interval
    due = last.timestamp() + interval - reconciler.clock()
    if due <= 0:  # overdue, yet another worker holds the lock (a pass longer than the interval)
        return min(interval, RECHECK_SECONDS)
    return min(interval, max(due, 0.05))


async def run_all(conn: psycopg.AsyncConnection, reconciler: Reconciler, now: datetime | None = None) -> None:
    now = now or reconciler.clock.utc()
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
    """A scheduled run of one tenant: every period whose invoice can still change. Returns the periods
    reconciled; none when another run of the tenant (the API's, an operator's) holds its lock: the
    tenant is skipped until the next pass."""
    wanted = await open_periods(conn, tenant, now, reconciler.settings.invoice_grace_seconds)
    done: list[str] = []
    for period in wanted:
        try:
            request = RunRequest(tenant, period=period, trigger="schedule", only_open=True, incremental=True)
            await reconciler.run(conn, request)
        except Busy:
            log.info("scheduled reconciliation: tenant %s is being reconciled already; skipped", tenant)
            break
        done.append(period)
    return done
