"""The worker's heartbeat: every few seconds a row in PostgreSQL saying it is alive and whether it is
ready (not rebalancing or recovering tables); every ``LAG_INTERVAL`` the pipeline's consumer lag is
measured into the lag gauges and the row. The API's readiness check reads these rows."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg

from stripemeter.adapters.kafka import lag
from stripemeter.adapters.postgres import heartbeats
from stripemeter.adapters.postgres.heartbeats import Heartbeat
from stripemeter.domain import metrics
from stripemeter.domain.config import Settings
from stripemeter.schemas.topics import TopicNames

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 5.0
LAG_INTERVAL = 15.0


def worker_id(settings: Settings) -> str:
    return settings.group_instance_id or f"{socket.gethostname()}-{os.getpid()}"


def publish_lag(samples: list[lag.Lag]) -> None:
    metrics.CONSUMER_LAG_MESSAGES.clear()
    metrics.CONSUMER_LAG_SECONDS.clear()
    for s in samples:
        labels = (s.group, s.topic, str(s.partition))
        metrics.CONSUMER_LAG_MESSAGES.labels(*labels).set(s.messages)
        metrics.CONSUMER_LAG_SECONDS.labels(*labels).set(s.seconds)


async def run(settings: Settings, status: Callable[[], dict[str, Any]], stopping: asyncio.Event) -> None:
    names = TopicNames(settings.topic_prefix, settings.app_id)
    me, started = worker_id(settings), datetime.now(UTC)
    max_lag: dict[str, float] = {}
    last_lag = 0.0
    conn: psycopg.AsyncConnection | None = None  # one connection for every beat
    while not stopping.is_set():
        if time.monotonic() - last_lag >= LAG_INTERVAL:
            last_lag = time.monotonic()
            try:
                samples = await lag.measure(settings.kafka, names)
                publish_lag(samples)
                max_lag = {}
                for s in samples:
                    max_lag[s.group] = max(max_lag.get(s.group, 0.0), s.seconds)
            except Exception as exc:  # lag is advice; a failed measurement must not stop the worker
                log.warning("could not measure consumer lag: %s", exc)
        state = {**status(), "lagSeconds": max_lag}
        beat = Heartbeat(
            me, settings.app_id, socket.gethostname(), os.getpid(), state["ready"], state, started
        )
        try:
            if conn is None or conn.closed:
                conn = await psycopg.AsyncConnection.connect(settings.database_url.value, autocommit=True)
            await heartbeats.beat(conn, beat)
        except psycopg.Error as exc:
            log.warning("could not write the heartbeat: %s", exc)
            if conn is not None:
                await conn.close()
            conn = None  # connect again at the next beat
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), HEARTBEAT_INTERVAL)
    if conn is not None:
        await conn.close()
