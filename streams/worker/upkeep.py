"""The worker's upkeep tasks: its heartbeat row, and the metric policies reloaded from PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import faust
import psycopg

from stripemeter.adapters.kafka.faust_typing import task
from stripemeter.adapters.postgres.mappings import load_policies
from stripemeter.domain.config import Settings
from stripemeter.domain.policy import Policies
from stripemeter.streams import heartbeat
from stripemeter.streams.worker.names import WORKER_LOGGER

log = logging.getLogger(WORKER_LOGGER)

POLICY_REFRESH_INTERVAL = 10.0


def install_heartbeat(
    app: faust.App, settings: Settings, status: Callable[[], dict[str, Any]], stopping: asyncio.Event
) -> None:
    """Task ``run_heartbeat``: the worker's row in PostgreSQL with ``status()``, until ``stopping``."""

    async def run_heartbeat() -> None:
        await heartbeat.run(settings, status, stopping)

    task(app)(run_heartbeat)


def install_policy_refresh(app: faust.App, settings: Settings, policies: Policies) -> None:
    """Task ``refresh_policies``: the metric mappings' lateness, every ``POLICY_REFRESH_INTERVAL``."""

    async def refresh_policies() -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(settings.database_url.value) as conn:
                    policies.replace(await load_policies(conn, policies.default))
            except psycopg.Error as exc:
                log.warning("could not load metric mappings (keeping the previous ones): %s", exc)
            await asyncio.sleep(POLICY_REFRESH_INTERVAL)

    task(app)(refresh_policies)
