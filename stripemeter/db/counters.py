"""The counters snapshot: usage.deltas records as PostgreSQL rows, newest seq wins.

The sink loads the delta records as they were read (COPY into a temporary ``jsonb`` table) and one
INSERT ... SELECT keeps the highest seq per counter: no Python object per delta on the way.
"""

from __future__ import annotations

from datetime import datetime

import psycopg

from stripemeter.db.ledger import copy_json_line
from stripemeter.streams.deltas import Delta

CREATE_DELTA_STAGING = "CREATE TEMP TABLE IF NOT EXISTS deltas_in (delta jsonb) ON COMMIT DELETE ROWS"

# totalMicros is exact; a record with only the contract's `total` is converted like decode_delta does.
UPSERT_COUNTERS = """
INSERT INTO counters (tenant_id, metric, customer_ref, bucket, total_micros, seq, updated_at)
SELECT DISTINCT ON (1, 2, 3, 4)
       delta->>'tenantId', delta->>'metric', delta->>'customerRef', (delta->>'bucket')::timestamptz,
       coalesce((delta->>'totalMicros')::numeric, round((delta->>'total')::numeric * 1000000)),
       (delta->>'seq')::bigint, %s::timestamptz
FROM deltas_in
ORDER BY 1, 2, 3, 4, 6 DESC
ON CONFLICT (tenant_id, metric, customer_ref, bucket) DO UPDATE
SET total_micros = EXCLUDED.total_micros, seq = EXCLUDED.seq, updated_at = EXCLUDED.updated_at
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


async def upsert_counters(conn: psycopg.AsyncConnection, records: list[bytes], now: datetime) -> None:
    """Apply raw usage.deltas records, changed at ``now`` (the application's clock: reconciliation
    compares it with its own). Call inside the batch's transaction."""
    if not records:
        return
    async with conn.cursor().copy("COPY deltas_in (delta) FROM STDIN") as copy:
        await copy.write(b"".join(map(copy_json_line, records)))
    await conn.execute(UPSERT_COUNTERS, (now,))
