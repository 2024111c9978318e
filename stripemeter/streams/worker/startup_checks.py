"""What the worker checks before it joins its group: that the topics can hold what the settings promise."""

from __future__ import annotations

import asyncio
import logging

from aiokafka.errors import KafkaError

from stripemeter.adapters.kafka.admin import check_replication
from stripemeter.domain.config import Settings
from stripemeter.schemas.topics import deployment_specs

log = logging.getLogger(__name__)

CHECK_SECONDS = 20.0


async def check_topic_replication(settings: Settings) -> None:
    """Raise ``ReplicationMismatch`` (the worker does not start) when the cluster has fewer brokers than
    the replication factor, or a topic has fewer replicas than it. A broker that does not answer in
    time is not a mismatch: the worker starts and waits for it, as it would without this check."""
    try:
        await asyncio.wait_for(check_replication(settings.kafka, deployment_specs(settings)), CHECK_SECONDS)
    except (KafkaError, TimeoutError) as exc:
        log.warning(
            "could not check the topics' replication (%s: %s); starting anyway", type(exc).__name__, exc
        )
        return
    log.info(
        "topics' replication checked: factor %d, min.insync.replicas %d",
        settings.topic_replication_factor,
        settings.topic_min_insync_replicas,
    )
