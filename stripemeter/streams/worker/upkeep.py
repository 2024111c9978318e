"""The worker's upkeep: its heartbeat row, and the metric policies loaded from PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
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
LOAD_TIMEOUT_SECONDS = 10  # a PostgreSQL that does not answer a connect is retried, not waited on


def install_heartbeat(
    app: faust.App, settings: Settings, status: Callable[[], dict[str, Any]], stopping: asyncio.Event
) -> None:
    """Task ``run_heartbeat``: the worker's row in PostgreSQL with ``status()``, until ``stopping``."""

    async def run_heartbeat() -> None:
        await heartbeat.run(settings, status, stopping)

    task(app)(run_heartbeat)


class PolicyLoader:
    """The metric policies from PostgreSQL, merged by version into ``policies`` (domain/policy.py).

    A mapping change reaches the meter as a control message in every keyed partition (read your
    writes, services/configuration.py). A worker that takes a partition over starts after the offset
    its previous holder committed, so the changes before it are not in what it reads: before it counts
    the first message of a partition it did not hold, it loads every policy. It also loads them at
    start (the same rule: it held no partition) and every ``POLICY_REFRESH_INTERVAL``.
    """

    def __init__(self, settings: Settings, policies: Policies):
        self.settings = settings
        self.policies = policies
        self.loaded_for: set[int] = set()  # partitions held since the last load
        self.waiting = False  # a load before counting is under way (it may be retrying PostgreSQL)
        self.revokes = 0  # how many times ``forget`` was called

    async def ready_for(self, partition: int, held: Callable[[], Iterable[int]] = tuple) -> None:
        """Load before the first message of ``partition``; one load serves every partition ``held()``
        names when it begins (all of them were assigned before it), not one load per partition."""
        if partition not in self.loaded_for:
            assigned, revokes = {partition, *held()}, self.revokes
            await self.load_until_done()
            if revokes == self.revokes:  # else a rebalance came during the load: the next message loads
                self.loaded_for |= assigned

    def forget(self) -> None:
        """Partitions are being revoked: whatever is assigned next is loaded for again."""
        self.loaded_for.clear()
        self.revokes += 1

    async def load(self) -> None:
        url = self.settings.database_url.value
        async with await psycopg.AsyncConnection.connect(url, connect_timeout=LOAD_TIMEOUT_SECONDS) as conn:
            self.policies.replace(await load_policies(conn, self.policies.default))

    async def load_until_done(self) -> None:
        """Counting waits for the policies: PostgreSQL failing stops the meter until it is back."""
        wait = 0.5
        self.waiting = True  # counting waits for the load, however long it takes: no stall of the meter
        while True:
            try:
                await self.load()
                self.waiting = False
                return
            except psycopg.Error as exc:
                log.warning("could not load metric mappings (counting waits, retry in %.1f s): %s", wait, exc)
                await asyncio.sleep(wait)
                wait = min(wait * 2, 10.0)


def install_policy_refresh(app: faust.App, loader: PolicyLoader) -> None:
    """Task ``refresh_policies``: every mapping from PostgreSQL, every ``POLICY_REFRESH_INTERVAL``."""

    async def refresh_policies() -> None:
        while True:
            await asyncio.sleep(POLICY_REFRESH_INTERVAL)
            try:
                await loader.load()
            except psycopg.Error as exc:
                log.warning("could not load metric mappings (keeping the previous ones): %s", exc)

    task(app)(refresh_policies)
