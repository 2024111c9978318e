"""The gauge behind StripemeterReconciliationStopped: the time of the last scheduled pass that ended
without an error, set by the worker that made it; a failed pass leaves it where it was."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from stripemeter.domain import metrics
from stripemeter.domain.config import Settings
from stripemeter.services.reconciliation import schedule as service
from stripemeter.services.reconciliation.build import build_reconciler
from tests.integration.test_reconcile_schedule import AppClock, forget_passes, no_publish


async def test_only_a_pass_that_ends_without_error_moves_the_gauge(
    env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    interval = 900.0
    clock = AppClock(datetime(2026, 12, 10, 12, tzinfo=UTC).timestamp())
    reconciler = build_reconciler(env, no_publish)
    reconciler.clock = clock  # type: ignore[assignment]
    metrics.RECONCILIATION_LAST_PASS.set(0)

    async def failing(conn: psycopg.AsyncConnection, reconciler: Any, now: Any = None) -> None:
        raise RuntimeError("Stripe is down")

    async def working(conn: psycopg.AsyncConnection, reconciler: Any, now: Any = None) -> None:
        return None

    await forget_passes(env)
    async with await psycopg.AsyncConnection.connect(env.database_url.value, autocommit=True) as conn:
        monkeypatch.setattr(service, "run_all", failing)
        await service.scheduled_pass(conn, reconciler, interval, "w")  # logged, the schedule goes on
        assert metrics.RECONCILIATION_LAST_PASS._value.get() == 0
        clock.advance(interval)
        monkeypatch.setattr(service, "run_all", working)
        before = time.time()
        await service.scheduled_pass(conn, reconciler, interval, "w")
        # wall time, not the application's clock: Prometheus compares it with its own time()
        assert before <= metrics.RECONCILIATION_LAST_PASS._value.get() <= time.time()
