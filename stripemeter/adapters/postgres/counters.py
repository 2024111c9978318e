"""The counters snapshot: usage.deltas records as PostgreSQL rows, newest seq wins.

The sink loads the delta records as they were read (COPY into a temporary ``jsonb`` table) and one
INSERT ... SELECT keeps the highest seq per counter: no Python object per delta on the way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import orjson
import psycopg

from stripemeter.adapters.postgres.ledger import copy_json_line
from stripemeter.schemas import versions
from stripemeter.schemas.deltas import Delta, record_version

CREATE_DELTA_STAGING = "CREATE TEMP TABLE IF NOT EXISTS deltas_in (delta jsonb) ON COMMIT DELETE ROWS"

# totalMicros is exact; a record with only the contract's `total` is converted like decode_delta does.
UPSERT_COUNTERS = """
INSERT INTO counters (tenant_id, metric, customer_ref, bucket, total_micros, seq, updated_at,
                      keyed_partition, keyed_offset, app_id)
SELECT DISTINCT ON (1, 2, 3, 4)
       delta->>'tenantId', delta->>'metric', delta->>'customerRef', (delta->>'bucket')::timestamptz,
       coalesce((delta->>'totalMicros')::numeric, round((delta->>'total')::numeric * 1000000)),
       (delta->>'seq')::bigint, %(now)s::timestamptz,
       (delta->>'keyedPartition')::integer, (delta->>'keyedOffset')::bigint, %(app)s::text
FROM deltas_in
ORDER BY 1, 2, 3, 4, 6 DESC
ON CONFLICT (tenant_id, metric, customer_ref, bucket) DO UPDATE
SET total_micros = EXCLUDED.total_micros, seq = EXCLUDED.seq, updated_at = EXCLUDED.updated_at,
    keyed_partition = EXCLUDED.keyed_partition, keyed_offset = EXCLUDED.keyed_offset, app_id = EXCLUDED.app_id
WHERE counters.seq < EXCLUDED.seq
"""


def latest_per_counter(deltas: list[Delta]) -> list[Delta]:
    """Keep only the highest seq of each counter (a batch may hold several of one counter)."""
    best: dict[tuple[str, str, str, int], Delta] = {}
    for d in deltas:
        key = (d.tenant_id, d.metric, d.customer_ref, d.bucket_ms)
        if key not in best or best[key].seq < d.seq:
            best[key] = d
    return list(best.values())


async def create_staging(conn: psycopg.AsyncConnection) -> None:
    await conn.execute(CREATE_DELTA_STAGING)


async def upsert_counters(
    conn: psycopg.AsyncConnection, records: list[bytes], now: datetime, app_id: str | None = None
) -> None:
    """Apply raw usage.deltas records of app ``app_id``, changed at ``now`` (the application's clock:
    reconciliation compares it with its own). Call inside the batch's transaction."""
    if not records:
        return
    for record in records:  # a later release's format stops the sink before anything is written
        versions.check(record_version(record), "a usage.deltas record")
    async with conn.cursor().copy("COPY deltas_in (delta) FROM STDIN") as copy:
        await copy.write(b"".join(map(copy_json_line, records)))
    await conn.execute(UPSERT_COUNTERS, {"now": now, "app": app_id})


# Which of the given targets the counters show: a counter shows a target once it has applied a keyed
# message at or after the target's offset in its partition. The targets travel as one JSON array of
# arrays (``targets_json``), answered by their positions (from 1); psycopg would dump six Python lists of
# thousands of values, datetimes among them, on every look.
SHOWN = """
SELECT t.position FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS t (target, position)
JOIN counters c
  ON c.tenant_id = t.target->>0 AND c.metric = t.target->>1 AND c.customer_ref = t.target->>2
 AND c.bucket = (t.target->>3)::timestamptz AND c.keyed_partition = (t.target->>4)::integer
 AND c.keyed_offset >= (t.target->>5)::bigint
"""


# How often a waiting apply looks: the sink writes a quiet pipeline's counters within tens of
# milliseconds; one look (a join of the targets still missing) takes 15-20 ms for 3,000 of them.
APPLIED_POLL_SECONDS = 0.025


@dataclass(frozen=True)
class Applied:
    """A control message for one counter: it shows once the counter has applied that keyed offset."""

    tenant_id: str
    metric: str
    customer_ref: str
    bucket: datetime
    keyed_partition: int
    keyed_offset: int


def targets_json(targets: list[Applied]) -> str:
    """The targets as arrays: SHOWN reads them, and a stored apply keeps them (replay.py)."""
    rows = [
        (t.tenant_id, t.metric, t.customer_ref, t.bucket, t.keyed_partition, t.keyed_offset) for t in targets
    ]
    return orjson.dumps(rows).decode()


async def not_shown(conn: psycopg.AsyncConnection, targets: list[Applied]) -> list[Applied]:
    """The ``targets`` the counters do not show yet."""
    if not targets:
        return []
    cur = await conn.execute(SHOWN, (targets_json(targets),))
    shown = {int(position) for (position,) in await cur.fetchall()}
    return [t for position, t in enumerate(targets, start=1) if position not in shown]


async def wait_applied(
    conn: psycopg.AsyncConnection,
    targets: list[Applied],
    timeout: float,
    progress: Callable[[int, int], None] | None = None,
    interval: float = APPLIED_POLL_SECONDS,
) -> bool:
    """Wait until every target shows in the counters (the meter applied the control message and the
    sink wrote the counter's new snapshot); False if ``timeout`` seconds passed first."""
    deadline = time.monotonic() + timeout
    waiting = targets
    while True:
        waiting = await not_shown(conn, waiting)  # each look asks only for what the last did not find
        if progress is not None:
            progress(len(targets) - len(waiting), len(targets))
        if not waiting:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)
