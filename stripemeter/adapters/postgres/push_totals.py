"""The newest totals push rows are made from, in ``stripe_pushes``: the usage.deltas records the writer
reads (``record_latest``), and the counters table for what usage.deltas no longer holds
(``counters_after``, services/push_backfill.py), each placed in its billing period (``anchors``)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import psycopg


@dataclass(frozen=True)
class Latest:
    """A counter's newest total from usage.deltas, the partition it came from, and its period."""

    tenant_id: str
    metric: str
    customer_ref: str
    bucket: datetime
    total_micros: int
    seq: int
    app_id: str
    partition: int
    period_start: datetime


UPSERT_LATEST = """
INSERT INTO stripe_pushes (tenant_id, metric, customer_ref, bucket, latest_micros, latest_seq, app_id,
                           delta_partition, period_start, updated_at)
SELECT *, %s::timestamptz FROM unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::numeric[],
                                     %s::bigint[], %s::text[], %s::integer[], %s::timestamptz[])
ON CONFLICT (tenant_id, metric, customer_ref, bucket) DO UPDATE
SET latest_micros = EXCLUDED.latest_micros, latest_seq = EXCLUDED.latest_seq, app_id = EXCLUDED.app_id,
    delta_partition = EXCLUDED.delta_partition, period_start = EXCLUDED.period_start,
    updated_at = EXCLUDED.updated_at, version = stripe_pushes.version + 1,
    status = CASE WHEN stripe_pushes.status IN ('pending', 'parked') THEN stripe_pushes.status
                  ELSE 'waiting' END
WHERE stripe_pushes.latest_seq < EXCLUDED.latest_seq
RETURNING tenant_id, metric, customer_ref, bucket, app_id, delta_partition
"""

# A stream's rows live in one partition, the one its newest delta came from: the writer holding it
# pushes the whole stream (targets carry from hour to hour). Usually nothing moves; when a stream's
# deltas arrive in another partition (usage.deltas gained partitions), its other rows follow, version
# + 1, so the previous holder's compare-and-set fails. Rows are locked in key order; a writer meeting a
# deadlock with another one recording the same stream runs the (seq-guarded) recording again.
FOLLOW = """
WITH incoming AS (
    SELECT * FROM unnest(%(tenants)s::text[], %(metrics)s::text[], %(customers)s::text[], %(apps)s::text[],
                         %(partitions)s::integer[])
                  AS i(tenant_id, metric, customer_ref, app_id, delta_partition)
), moved AS (
    -- only new streams and streams that moved are written (and locked): usually none
    INSERT INTO stripe_push_streams (tenant_id, metric, customer_ref, app_id, delta_partition)
    SELECT i.* FROM incoming i
    LEFT JOIN stripe_push_streams s USING (tenant_id, metric, customer_ref)
    WHERE s.delta_partition IS DISTINCT FROM i.delta_partition OR s.app_id IS DISTINCT FROM i.app_id
    ORDER BY i.tenant_id, i.metric, i.customer_ref
    ON CONFLICT (tenant_id, metric, customer_ref) DO UPDATE
    SET app_id = EXCLUDED.app_id, delta_partition = EXCLUDED.delta_partition
    WHERE stripe_push_streams.delta_partition <> EXCLUDED.delta_partition
       OR stripe_push_streams.app_id IS DISTINCT FROM EXCLUDED.app_id
    RETURNING tenant_id, metric, customer_ref, delta_partition
), locked AS (
    SELECT p.tenant_id, p.metric, p.customer_ref, p.bucket, m.delta_partition
    FROM stripe_pushes p JOIN moved m USING (tenant_id, metric, customer_ref)
    WHERE p.delta_partition IS DISTINCT FROM m.delta_partition
    ORDER BY p.tenant_id, p.metric, p.customer_ref, p.bucket
    FOR UPDATE OF p
)
UPDATE stripe_pushes p SET delta_partition = l.delta_partition, version = p.version + 1,
                           updated_at = %(now)s
FROM locked l
WHERE p.tenant_id = l.tenant_id AND p.metric = l.metric AND p.customer_ref = l.customer_ref
  AND p.bucket = l.bucket
"""


# --- what usage.deltas says -------------------------------------------------------------------------


async def record_latest(conn: psycopg.AsyncConnection, latest: list[Latest], now: datetime) -> None:
    """Keep the highest seq per counter; a change makes the counter due (version + 1), and the rest of
    its stream follows the partition of its newest changed hour (``FOLLOW``). Seq-guarded, so any
    number of writers may record the same counters, in any order."""
    best: dict[tuple[str, str, str, datetime], Latest] = {}
    for d in latest:
        key = (d.tenant_id, d.metric, d.customer_ref, d.bucket)
        if key not in best or best[key].seq < d.seq:
            best[key] = d
    rows = [best[key] for key in sorted(best)]  # key order: concurrent upserts never deadlock
    if not rows:
        return
    cur = await conn.execute(
        UPSERT_LATEST,
        (
            now,
            [d.tenant_id for d in rows],
            [d.metric for d in rows],
            [d.customer_ref for d in rows],
            [d.bucket for d in rows],
            [d.total_micros for d in rows],
            [d.seq for d in rows],
            [d.app_id for d in rows],
            [d.partition for d in rows],
            [d.period_start for d in rows],
        ),
    )
    newest: dict[tuple[str, str, str], tuple[datetime, str, int]] = {}
    for tenant, metric, customer, bucket, app, partition in await cur.fetchall():
        stream = (tenant, metric, customer)
        if stream not in newest or newest[stream][0] < bucket:
            newest[stream] = (bucket, app, partition)
    if newest:
        streams = sorted(newest)
        await conn.execute(
            FOLLOW,
            {
                "tenants": [s[0] for s in streams],
                "metrics": [s[1] for s in streams],
                "customers": [s[2] for s in streams],
                "apps": [newest[s][1] for s in streams],
                "partitions": [newest[s][2] for s in streams],
                "now": now,
            },
        )


# --- what the counters say ---------------------------------------------------------------------------

# A batch of the app's counters in key order after a cursor, with the seq of their push rows (NULL:
# none). Hours older than ``oldest`` are left out: Stripe would not take them.
COUNTERS_AFTER = """
SELECT c.tenant_id, c.metric, c.customer_ref, c.bucket, c.total_micros, c.seq, p.latest_seq
FROM (
    SELECT tenant_id, metric, customer_ref, bucket, total_micros, seq FROM counters
    WHERE app_id = %(app)s AND bucket >= %(oldest)s
      AND (bucket, tenant_id, metric, customer_ref) > (%(bucket)s, %(tenant)s, %(metric)s, %(customer)s)
    ORDER BY bucket, tenant_id, metric, customer_ref
    LIMIT %(limit)s
) c
LEFT JOIN stripe_pushes p USING (tenant_id, metric, customer_ref, bucket)
ORDER BY c.bucket, c.tenant_id, c.metric, c.customer_ref
"""

CounterKey = tuple[datetime, str, str, str]  # bucket, tenant, metric, customer: the counters' scan order


@dataclass(frozen=True)
class CounterRow:
    """A counter as the sink wrote it, and the seq its push row holds (None: it has none)."""

    tenant_id: str
    metric: str
    customer_ref: str
    bucket: datetime
    total_micros: int
    seq: int
    pushed_seq: int | None

    @property
    def scan_key(self) -> CounterKey:
        return (self.bucket, self.tenant_id, self.metric, self.customer_ref)

    @property
    def behind(self) -> bool:
        """Whether the push row misses this counter or an older total of it."""
        return self.pushed_seq is None or self.pushed_seq < self.seq


async def counters_after(
    conn: psycopg.AsyncConnection, app_id: str, oldest: datetime, after: CounterKey, limit: int
) -> list[CounterRow]:
    """Up to ``limit`` of the app's counters of hours from ``oldest`` on, after ``after`` in scan order."""
    bucket, tenant, metric, customer = after
    cur = await conn.execute(
        COUNTERS_AFTER,
        {"app": app_id, "oldest": oldest, "bucket": bucket, "tenant": tenant, "metric": metric,
         "customer": customer, "limit": limit},
    )  # fmt: skip
    return [
        CounterRow(t, m, c, b, int(total), int(seq), int(pushed) if pushed is not None else None)
        for t, m, c, b, total, seq, pushed in await cur.fetchall()
    ]


async def anchors(
    conn: psycopg.AsyncConnection, customers: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], datetime | None]:
    """Billing anchors of (tenant, customer) pairs; a customer without a mapping has none."""
    pairs = sorted(set(customers))
    if not pairs:
        return {}
    cur = await conn.execute(
        "SELECT tenant_id, customer_ref, billing_anchor FROM customer_mappings"
        " JOIN unnest(%s::text[], %s::text[]) AS k(tenant_id, customer_ref) USING (tenant_id, customer_ref)",
        ([t for t, _ in pairs], [c for _, c in pairs]),
    )
    found = {(t, c): a for t, c, a in await cur.fetchall()}
    return {pair: found.get(pair) for pair in pairs}
