"""Stages run as tasks in the worker's own process: intake, the Stripe writer, the reconciler, the
invoice guard and the PostgreSQL sink; a stage that fails crashes the worker."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import faust

from stripemeter.adapters.kafka.faust_typing import task
from stripemeter.adapters.stripe.budget import StripeBudget
from stripemeter.domain import metrics
from stripemeter.domain.config import Settings
from stripemeter.services.invoice_guard import GuardSettings, InvoiceGuard, run_guard
from stripemeter.services.reconciliation.build import build_reconciler, kafka_publisher, stripe_configured
from stripemeter.services.reconciliation.schedule import run_schedule
from stripemeter.streams.worker.factories import intake_stage, postgres_sink, stripe_writer
from stripemeter.streams.worker.meter import Meter
from stripemeter.streams.worker.names import WORKER_LOGGER

log = logging.getLogger(WORKER_LOGGER)


class InProcessStages:
    """Intake and the sink are built either way (a stop stops them); only those ``run_intake`` and
    ``run_sink`` ask for get a task. The writer and the reconciler run whenever Stripe is configured."""

    def __init__(self, settings: Settings, run_intake: bool, run_sink: bool) -> None:
        self.settings = settings
        self.run_intake = run_intake
        self.run_sink = run_sink
        self.intake = intake_stage(settings)
        self.sink = postgres_sink(settings)

    def install(self, app: faust.App, meter: Meter, stopping: asyncio.Event) -> None:
        """Tasks ``run_intake``, ``run_stripe_writer``, ``run_reconciler``, ``run_invoice_guard`` and
        ``run_sink``, as configured."""
        settings, intake, sink = self.settings, self.intake, self.sink
        if self.run_intake:

            async def run_intake() -> None:
                await _supervise(app, "intake", intake.run)

            task(app)(run_intake)

        # one Stripe budget for the process: the writer and the reconciler share Stripe's per-account limits
        budget = StripeBudget(settings.stripe_calls_per_second)
        if stripe_configured(settings):
            writer = stripe_writer(settings, budget)

            async def run_stripe_writer() -> None:
                await _supervise(app, "stripe writer", writer.run)

            task(app)(run_stripe_writer)
        else:
            log.warning("STRIPE_API_KEY is not set: counters are not pushed to Stripe")

        if stripe_configured(settings) and settings.reconcile_interval_seconds > 0:

            async def run_reconciler() -> None:
                metrics.RECONCILIATION_INTERVAL.set(settings.reconcile_interval_seconds)
                await meter.producer_started.wait()
                # not at once: a restarting fleet would otherwise reconcile on every start
                await asyncio.sleep(min(60.0, settings.reconcile_interval_seconds))
                publish = kafka_publisher(meter.checkpointer.producer, meter.names.drift)
                reconciler = build_reconciler(settings, publish, budget)
                await _supervise(app, "reconciler", lambda: run_schedule(settings, reconciler, stopping))

            task(app)(run_reconciler)

        if stripe_configured(settings) and settings.invoice_guard:

            async def run_invoice_guard() -> None:
                await meter.producer_started.wait()
                publish = kafka_publisher(meter.checkpointer.producer, meter.names.drift)
                guard = InvoiceGuard(
                    build_reconciler(settings, publish, budget), GuardSettings.of(settings), settings.clock
                )
                await _supervise(app, "invoice guard", lambda: run_guard(settings, guard, stopping))

            task(app)(run_invoice_guard)

        if self.run_sink:

            async def run_sink() -> None:
                await _supervise(app, "postgres sink", sink.run)

            task(app)(run_sink)

    def stop(self) -> None:
        self.intake.stop()
        self.sink.stop()


async def _supervise(app: faust.App, name: str, run: Callable[[], Awaitable[None]]) -> None:
    """Run a plain-aiokafka stage; if it fails, crash the worker rather than run half a pipeline."""
    try:
        await run()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.exception("%s failed; stopping the worker", name)
        await app.crash(exc)
