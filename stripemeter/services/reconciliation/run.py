"""One reconciliation run of a tenant (and optionally one metric) over one billing period: check,
act, report (see the package's docstring).

Runs of one tenant never overlap (a PostgreSQL advisory lock, tried: a second run is ``Busy``),
whichever process starts them.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg

from stripemeter.adapters.postgres import locks
from stripemeter.adapters.postgres import reconciliation as db
from stripemeter.adapters.stripe.reader import StripeReader
from stripemeter.domain import metrics, periods
from stripemeter.domain.clock import SYSTEM, Clock
from stripemeter.services.reconciliation import report
from stripemeter.services.reconciliation.act import Corrector
from stripemeter.services.reconciliation.check import Checker, Progress
from stripemeter.services.reconciliation.report import Publish
from stripemeter.services.reconciliation.request import ReconcileSettings, RunRequest


class Reconciler:
    def __init__(
        self, reader: StripeReader, publish: Publish, settings: ReconcileSettings, clock: Clock = SYSTEM
    ):
        self.clock = clock
        self.reader = reader
        self.publish = publish
        self.settings = settings

    async def run(
        self,
        conn: psycopg.AsyncConnection,
        request: RunRequest,
        now: float | None = None,
        progress: Progress | None = None,
        wait: bool = False,
    ) -> dict[str, Any]:
        """One run; ``progress(done, total)`` is told as items are checked against Stripe. While
        another run of the tenant goes on it raises ``Busy`` (with ``wait``: waits for it)."""
        now = self.clock() if now is None else now
        period_name = request.period or periods.current_name(datetime.fromtimestamp(now, tz=UTC))
        lock = f"stripemeter-reconcile:{request.tenant_id}"
        busy = f"tenantId: a reconciliation of tenant {request.tenant_id!r} is running; retry when it is done"
        async with locks.held(conn, lock, busy, wait=wait):
            return await self._run_locked(conn, request, period_name, now, progress)

    async def _run_locked(
        self,
        conn: psycopg.AsyncConnection,
        request: RunRequest,
        period_name: str,
        now: float,
        progress: Progress | None,
    ) -> dict[str, Any]:
        started, calls_before = time.perf_counter(), self.reader.calls
        run_id = "rec_" + uuid.uuid4().hex[:20]
        tenant, settings = request.tenant_id, self.settings
        await db.start_run(
            conn, run_id, tenant, request.metric, period_name, request.trigger, settings.epsilon
        )
        corrector = Corrector(self.reader, self.clock)  # per run: the clock can be set on the Reconciler
        try:
            await corrector.resend_pending(conn, tenant)  # an earlier run's unanswered corrections first
            check = await Checker(self.reader, settings).check(conn, request, period_name, now, progress)
            outcomes = await corrector.act(conn, run_id, request.align, check, now)
            at = datetime.fromtimestamp(now, tz=UTC)
            found = report.findings(run_id, period_name, outcomes, at)
            proven = report.proofs(period_name, outcomes, check.digests, at)
            stripe_calls = self.reader.calls - calls_before
            await report.record(conn, run_id, found, stripe_calls, self.publish, proven)
        except Exception as exc:
            await db.fail_run(conn, run_id, f"{type(exc).__name__}: {exc}")
            metrics.RECONCILIATION_RUNS.labels("failed").inc()
            raise
        seconds = time.perf_counter() - started
        reasons: dict[str, int] | None = dict(check.reasons) if request.incremental else None
        report.observe(run_id, request, period_name, found, stripe_calls, seconds, reasons)
        return report.summary(
            run_id, request, period_name, settings.epsilon, found, stripe_calls, seconds, reasons
        )
