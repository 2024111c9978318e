"""SQL for the counters snapshot, as pure text plus thin async executors."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg

from stripemeter.streams.deltas import Delta

UPSERT_COUNTERS = """
INSERT INTO counters (tenant_id, metric, customer_ref, bucket, total_micros, seq)
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::numeric[], %s::bigint[])
ON CONFLICT (tenant_id, metric, customer_ref, bucket) DO UPDATE
SET total_micros = EXCLUDED.total_micros, seq = EXCLUDED.seq, updated_at = now()
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


async def upsert_counters(conn: psycopg.AsyncConnection, deltas: list[Delta]) -> None:
    rows = latest_per_counter(deltas)
    if not rows:
        return
    params = (
        [d.tenant_id for d in rows],
        [d.metric for d in rows],
        [d.customer_ref for d in rows],
        [datetime.fromtimestamp(d.bucket_ms / 1000, tz=UTC) for d in rows],
        [d.total_micros for d in rows],
        [d.seq for d in rows],
    )
    async with conn.transaction():
        await conn.execute(UPSERT_COUNTERS, params)
