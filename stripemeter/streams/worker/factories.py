"""The plain-aiokafka stages built from the settings: intake, the PostgreSQL sink and the Stripe writer."""

from __future__ import annotations

from stripemeter.adapters.stripe.budget import StripeBudget
from stripemeter.adapters.stripe.client import make_client
from stripemeter.domain.config import Settings
from stripemeter.schemas.topics import TopicNames
from stripemeter.streams.intake import Intake
from stripemeter.streams.sink import PostgresSink
from stripemeter.streams.stripe_writer import StripeWriter


def stripe_writer(settings: Settings, budget: StripeBudget) -> StripeWriter:
    names = TopicNames(settings.topic_prefix, settings.app_id)
    client = make_client(
        settings.stripe_api_key.value or "sk_test_emulator",
        settings.stripe_api_base,
        timeout=settings.stripe_timeout_seconds,
    )
    return StripeWriter(
        settings.kafka,
        names.deltas,
        f"{settings.app_id}-stripe-writer",
        settings.app_id,
        settings.database_url.value,
        client,
        budget,
        clock=settings.clock,
        api=settings.stripe_api,
        stream_events_per_second=settings.stripe_stream_events_per_second,
    )


def intake_stage(settings: Settings) -> Intake:
    names = TopicNames(settings.topic_prefix, settings.app_id)
    return Intake(settings.kafka, names, group_id=f"{settings.app_id}-intake", clock=settings.clock)


def postgres_sink(settings: Settings) -> PostgresSink:
    names = TopicNames(settings.topic_prefix, settings.app_id)
    return PostgresSink(
        settings.kafka,
        names,
        names.sink_group,
        settings.database_url.value,
        clock=settings.clock,
        retention_days=settings.ledger_retention_days,
    )
