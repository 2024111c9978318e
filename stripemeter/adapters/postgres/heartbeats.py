"""The workers' heartbeats in ``worker_heartbeats``: each worker writes its row every few seconds
(streams/heartbeat.py); the API's readiness check reads the fresh ones (api/health.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import psycopg

UPSERT = """
INSERT INTO worker_heartbeats (worker_id, app_id, host, pid, ready, state, started_at, seen_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, now())
ON CONFLICT (worker_id) DO UPDATE SET app_id = EXCLUDED.app_id, host = EXCLUDED.host, pid = EXCLUDED.pid,
    ready = EXCLUDED.ready, state = EXCLUDED.state, started_at = EXCLUDED.started_at, seen_at = now()
"""

FRESH = """
SELECT worker_id, ready, state, extract(epoch FROM now() - seen_at) FROM worker_heartbeats
WHERE app_id = %s AND seen_at > now() - %s * interval '1 second' ORDER BY worker_id
"""


@dataclass(frozen=True)
class Heartbeat:
    """A worker saying it is alive: whether it is ready, and its state (lag per group, ...)."""

    worker_id: str
    app_id: str
    host: str
    pid: int
    ready: bool
    state: dict[str, Any]
    started_at: datetime


@dataclass(frozen=True)
class SeenWorker:
    """A worker whose heartbeat is fresh, as the readiness check reads it."""

    worker_id: str
    ready: bool
    state: dict[str, Any]
    age_seconds: float


async def beat(conn: psycopg.AsyncConnection, heartbeat: Heartbeat) -> None:
    """Write the worker's row; ``seen_at`` is PostgreSQL's now, the clock the readers compare with."""
    h = heartbeat
    state = orjson.dumps(h.state).decode()
    await conn.execute(UPSERT, (h.worker_id, h.app_id, h.host, h.pid, h.ready, state, h.started_at))


async def fresh(conn: psycopg.AsyncConnection, app_id: str, stale_seconds: float) -> list[SeenWorker]:
    """The app's workers seen within ``stale_seconds``, by worker id."""
    cur = await conn.execute(FRESH, (app_id, stale_seconds))
    return [
        SeenWorker(worker, bool(ready), state, float(age))
        for worker, ready, state, age in await cur.fetchall()
    ]
