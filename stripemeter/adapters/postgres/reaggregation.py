"""What a metric's counters hold in PostgreSQL, and what the ledger says they would hold under another
aggregation: the answers behind a mapping change of ``aggregation`` (409, dry-run, apply)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg

from stripemeter.adapters.postgres.ledger_partitions import time_window


@dataclass(frozen=True)
class Counted:
    """How much of a metric was counted from ``since`` on: counters, and events in the ledger."""

    counters: int
    events: int


async def counted_since(
    conn: psycopg.AsyncConnection, tenant: str, metric: str, since: datetime, events: bool = True
) -> Counted:
    """Counters from ``since`` on, and (``events``) the ledger's counted events: a range scan of the
    ledger's stream index, so asked for only when a new mapping says how much it was preceded by."""
    cur = await conn.execute(
        "SELECT (SELECT count(*) FROM counters WHERE tenant_id = %(tenant)s AND metric = %(metric)s"
        "        AND bucket >= %(since)s),"
        "       CASE WHEN %(events)s THEN"
        "       (SELECT count(*) FROM events WHERE tenant_id = %(tenant)s AND metric = %(metric)s"
        f"        AND ts >= %(since)s AND {time_window('%(since)s', None)}"
        "        AND outcome = 'counted') ELSE 0 END",
        {"tenant": tenant, "metric": metric, "since": since, "events": events},
    )
    row = await cur.fetchone()
    return Counted(int(row[0]), int(row[1])) if row else Counted(0, 0)


@dataclass(frozen=True)
class HourFold:
    """One counter hour: its value now, and its events folded every way from the ledger."""

    customer_ref: str
    bucket: datetime
    total_micros: int | None  # the counter now (None: not in PostgreSQL yet)
    sum_micros: int
    events: int
    last_micros: int
    adjusted_micros: int  # applied adjustments


# The hour's events as the meter counted them: counted rows, and too-late rows a sent replay
# correction counted (one per key and customer, the first received, as replays pick them); the newest
# by event time, then by place in usage.events (the meter lets the later one win a tie).
PREVIEW = f"""
WITH replayed AS (
    SELECT DISTINCT ON (e.idempotency_key, e.customer_ref)
           e.customer_ref, e.ts, e.quantity_micros, e.source_partition, e.source_offset, e.source_index
    FROM events e
    JOIN replayed_keys r ON r.tenant_id = e.tenant_id AND r.idempotency_key = e.idempotency_key
                        AND r.customer_ref = e.customer_ref
    LEFT JOIN replay_corrections c ON c.correction_id = r.correction_id
    WHERE e.tenant_id = %(tenant)s AND e.metric = %(metric)s AND e.ts >= %(since)s AND e.outcome = 'late'
      AND {time_window("%(since)s", None)}
      AND (r.correction_id IS NULL OR c.status = 'sent')
    ORDER BY e.idempotency_key, e.customer_ref, e.source_topic, e.source_partition, e.source_offset,
             e.source_index
), counted AS (
    SELECT customer_ref, ts, quantity_micros, source_partition, source_offset, source_index
    FROM events
    WHERE tenant_id = %(tenant)s AND metric = %(metric)s AND ts >= %(since)s AND outcome = 'counted'
      AND {time_window("%(since)s", None)}
    UNION ALL
    SELECT * FROM replayed
), folded AS (
    SELECT customer_ref, date_trunc('hour', ts) AS bucket, sum(quantity_micros) AS sum_micros,
           count(*) AS events,
           (array_agg(quantity_micros ORDER BY ts DESC, source_partition DESC, source_offset DESC,
                      source_index DESC))[1] AS last_micros
    FROM counted GROUP BY 1, 2
), adjusted AS (
    SELECT customer_ref, bucket, sum(delta_micros) AS adjusted FROM adjustments
    WHERE tenant_id = %(tenant)s AND metric = %(metric)s AND target = 'counter' AND status = 'applied'
      AND bucket >= %(since)s
    GROUP BY 1, 2
), now_held AS (
    SELECT customer_ref, bucket, total_micros FROM counters
    WHERE tenant_id = %(tenant)s AND metric = %(metric)s AND bucket >= %(since)s
)
SELECT coalesce(h.customer_ref, f.customer_ref, a.customer_ref) AS customer_ref,
       coalesce(h.bucket, f.bucket, a.bucket) AS bucket, h.total_micros,
       coalesce(f.sum_micros, 0), coalesce(f.events, 0), coalesce(f.last_micros, 0), coalesce(a.adjusted, 0)
FROM now_held h
FULL JOIN folded f ON f.customer_ref = h.customer_ref AND f.bucket = h.bucket
FULL JOIN adjusted a ON a.customer_ref = coalesce(h.customer_ref, f.customer_ref)
                    AND a.bucket = coalesce(h.bucket, f.bucket)
ORDER BY 1, 2
"""


async def hours_folded(
    conn: psycopg.AsyncConnection, tenant: str, metric: str, since: datetime
) -> list[HourFold]:
    cur = await conn.execute(PREVIEW, {"tenant": tenant, "metric": metric, "since": since})
    return [
        HourFold(
            customer, bucket, None if total is None else int(total), int(sums), int(n), int(last), int(adj)
        )
        for customer, bucket, total, sums, n, last, adj in await cur.fetchall()
    ]
