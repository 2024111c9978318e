"""A Reconciler from the settings, with its drift records sent to Kafka."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer

from stripemeter.adapters.stripe.budget import StripeBudget
from stripemeter.adapters.stripe.client import make_client
from stripemeter.adapters.stripe.reader import StripeReader
from stripemeter.domain.config import Settings
from stripemeter.services.reconciliation.report import Publish
from stripemeter.services.reconciliation.request import ReconcileSettings
from stripemeter.services.reconciliation.run import Reconciler


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
    client = make_client(
        settings.stripe_api_key.value or "sk_test_emulator",
        settings.stripe_api_base,
        timeout=settings.stripe_timeout_seconds,
    )
    budget = budget or StripeBudget(settings.stripe_calls_per_second)
    reader = StripeReader(client, budget, concurrency)
    return Reconciler(
        reader,
        publish,
        ReconcileSettings(
            epsilon=settings.reconcile_epsilon,
            settle_seconds=settings.reconcile_settle_seconds,
            lag_cap_seconds=settings.reconcile_lag_cap_seconds,
            invoice_grace_seconds=settings.invoice_grace_seconds,
            app_id=settings.app_id,
            sweep_seconds=settings.reconcile_sweep_seconds,
            closing_seconds=settings.reconcile_closing_seconds,
            interval_seconds=settings.reconcile_interval_seconds,
        ),
        settings.clock,
    )
