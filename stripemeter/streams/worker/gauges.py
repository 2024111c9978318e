"""The worker's memory gauges, its garbage-cycle collection and the table-recovery watchdog."""

from __future__ import annotations

import logging
import sys

import faust

from stripemeter.adapters.kafka import rocksdb_memory
from stripemeter.adapters.kafka.changelog_state import ChangelogState
from stripemeter.adapters.kafka.faust_typing import recovery, timer
from stripemeter.domain import metrics
from stripemeter.streams import memory_tuning
from stripemeter.streams.watchdog import RecoveryWatchdog, restart_process
from stripemeter.streams.worker.names import WORKER_LOGGER

log = logging.getLogger(WORKER_LOGGER)

MEMORY_GAUGE_INTERVAL = 5.0
RECOVERY_WATCH_INTERVAL = 5.0


def install_memory_gauges(app: faust.App, states: dict[str, ChangelogState]) -> None:
    """Timers measuring memory into the gauges, and collecting garbage cycles on the worker's schedule."""

    async def measure_memory() -> None:
        """Where the worker's memory is: RocksDB by kind, Python's own heap, and the C heap under both."""
        databases = [db for state in states.values() for db in state.databases()]
        for kind, size in rocksdb_memory.usage(databases).items():
            metrics.ROCKSDB_MEMORY.labels(kind).set(size)
        metrics.PYTHON_BLOCKS.set(sys.getallocatedblocks())
        for kind, size in (memory_tuning.heap_usage() or {}).items():
            metrics.HEAP_MEMORY.labels(kind).set(size)

    async def collect_cycles() -> None:
        memory_tuning.collect_cycles()

    timer(app, MEMORY_GAUGE_INTERVAL)(measure_memory)
    timer(app, memory_tuning.CYCLE_INTERVAL)(collect_cycles)


def install_recovery_watchdog(app: faust.App) -> None:
    """A timer restarting the process when table recovery stalls."""
    watchdog = RecoveryWatchdog(recovery(app))

    async def watch_recovery() -> None:
        if watchdog.stalled():
            log.error(
                "table recovery made no progress for %.0fs (%d changelog records left); restarting",
                watchdog.stall_seconds,
                recovery(app).active_remaining_total(),
            )
            restart_process()

    timer(app, RECOVERY_WATCH_INTERVAL)(watch_recovery)
