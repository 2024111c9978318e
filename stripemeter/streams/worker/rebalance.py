"""What the worker does when partitions move: flush before giving them up, forget remembered values."""

from __future__ import annotations

from typing import Any

import faust

from stripemeter.adapters.kafka.changelog_state import ChangelogState
from stripemeter.domain import metrics
from stripemeter.streams.worker.meter import Meter


def install_rebalance_hooks(
    app: faust.App, meter: Meter, states: dict[str, ChangelogState], keyed_topic: str
) -> None:
    """Handlers for Faust's partitions-revoked and rebalance-complete signals."""

    def forget_remembered() -> None:
        """A partition held again may have been written by another worker meanwhile, and a changelog
        restore writes RocksDB directly: values remembered in front of it are true no more."""
        for state in states.values():
            state.forget()

    async def flush_before_revoke(app: faust.App, /, *args: Any, **kwargs: Any) -> None:
        """Nothing staged for a partition may reach its changelog after another worker took it over."""
        await meter.before_revoke()
        forget_remembered()
        metrics.WORKER_PARTITIONS.set(0)
        metrics.WORKER_REVOCATIONS.inc()

    async def count_partitions(app: faust.App, /, *args: Any, **kwargs: Any) -> None:
        forget_remembered()  # again once assigned: nothing may have been remembered in between
        meter.progress.assigned()  # each partition starts again at its committed offset
        metrics.WORKER_PARTITIONS.set(
            len([tp for tp in app.consumer.assignment() if tp.topic == keyed_topic])
        )

    app.on_partitions_revoked.connect(flush_before_revoke)
    app.on_rebalance_complete.connect(count_partitions)
