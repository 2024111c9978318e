"""The Stripe writer's state in PostgreSQL (table ``stripe_pushes``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from stripemeter.db.counters import latest_per_counter
from stripemeter.streams.deltas import Delta
from stripemeter.stripe_push.plan import CounterState, Mapping

Key = tuple[str, str, str, datetime]

UPSERT_LATEST = """
INSERT INTO stripe_pushes (tenant_id, metric, customer_ref, bucket, latest_micros, latest_seq, updated_at)
SELECT *, %s::timestamptz
FROM unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::numeric[], %s::bigint[])
ON CONFLICT (tenant_id, metric, customer_ref, bucket) DO UPDATE
SET latest_micros = EXCLUDED.latest_micros, latest_seq = EXCLUDED.latest_seq,
    updated_at = EXCLUDED.updated_at,
    status = CASE WHEN stripe_pushes.status IN ('pending', 'parked') THEN stripe_pushes.status
                  ELSE 'waiting' END
WHERE stripe_pushes.latest_seq < EXCLUDED.latest_seq
"""

DUE = """
SELECT p.tenant_id, p.metric, p.customer_ref, p.bucket, p.latest_micros, p.latest_seq, p.pushed_units,
       p.pending_identifier, p.pending_to_units, p.attempts,
       m.stripe_meter_event_name, m.aggregation, c.stripe_customer_id
FROM stripe_pushes p
LEFT JOIN metric_mappings m ON m.tenant_id = p.tenant_id AND m.metric = p.metric
LEFT JOIN customer_mappings c ON c.tenant_id = p.tenant_id AND c.customer_ref = p.customer_ref
WHERE p.status IN ('waiting', 'pending', 'unmapped')
  -- a counter whose last push failed waits 0.25 s * 2^attempts (at most 30 s, with jitter) on its own,
  -- so one failing customer never holds back the others
  AND (p.attempts = 0
       OR p.updated_at + least(0.25 * power(2, p.attempts), 30) * (0.5 + random() / 2) * interval '1 second'
          <= %s)
ORDER BY p.attempts, p.updated_at
LIMIT %s
"""


def bucket_time(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


async def record_latest(conn: psycopg.AsyncConnection, deltas: list[Delta], now: datetime) -> None:
    rows = latest_per_counter(deltas)
    if not rows:
        return
    await conn.execute(
        UPSERT_LATEST,
        (
            now,
            [d.tenant_id for d in rows],
            [d.metric for d in rows],
            [d.customer_ref for d in rows],
            [bucket_time(d.bucket_ms) for d in rows],
            [d.total_micros for d in rows],
            [d.seq for d in rows],
        ),
    )


async def due(
    conn: psycopg.AsyncConnection, limit: int, now: datetime
) -> list[tuple[Key, CounterState, Mapping | None, int]]:
    """Counters with something to push (or waiting for a mapping), fewest failed attempts first."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(DUE, (now, limit))
    out = []
    for r in await cur.fetchall():
        key: Key = (r["tenant_id"], r["metric"], r["customer_ref"], r["bucket"])
        state = CounterState(
            r["tenant_id"],
            r["metric"],
            r["customer_ref"],
            int(r["bucket"].timestamp()),
            int(r["latest_micros"]),
            int(r["latest_seq"]),
            int(r["pushed_units"]),
            r["pending_identifier"],
            r["pending_to_units"],
        )
        mapping = None
        if r["stripe_meter_event_name"] and r["stripe_customer_id"]:
            mapping = Mapping(r["stripe_meter_event_name"], r["aggregation"], r["stripe_customer_id"])
        out.append((key, state, mapping, int(r["attempts"])))
    return out


async def _update(
    conn: psycopg.AsyncConnection, key: Key, assignments: str, params: tuple[Any, ...], now: datetime
) -> None:
    await conn.execute(
        f"UPDATE stripe_pushes SET {assignments}, updated_at = %s"
        " WHERE tenant_id = %s AND metric = %s AND customer_ref = %s AND bucket = %s",
        (*params, now, *key),
    )


async def mark_pending(
    conn: psycopg.AsyncConnection, key: Key, identifier: str, to_units: int, now: datetime
) -> None:
    await _update(
        conn,
        key,
        "status = 'pending', pending_identifier = %s, pending_to_units = %s",
        (identifier, to_units),
        now,
    )


async def mark_pushed(
    conn: psycopg.AsyncConnection, key: Key, to_units: int, synced: bool, now: datetime
) -> None:
    await _update(
        conn,
        key,
        "pushed_units = %s, pending_identifier = NULL, pending_to_units = NULL, attempts = 0, reason = NULL,"
        " status = %s",
        (to_units, "synced" if synced else "waiting"),
        now,
    )


async def mark_status(
    conn: psycopg.AsyncConnection, key: Key, status: str, reason: str | None, now: datetime
) -> None:
    await _update(conn, key, "status = %s, reason = %s", (status, reason), now)


async def mark_failed_attempt(conn: psycopg.AsyncConnection, key: Key, reason: str, now: datetime) -> None:
    await _update(conn, key, "attempts = attempts + 1, reason = %s", (reason,), now)


async def list_pushes(conn: psycopg.AsyncConnection, tenant: str, status: str | None) -> list[dict[str, Any]]:
    query = (
        "SELECT tenant_id, metric, customer_ref, bucket, latest_micros, pushed_units, status, reason,"
        " attempts, updated_at FROM stripe_pushes WHERE tenant_id = %s"
    )
    params: list[Any] = [tenant]
    if status:
        query += " AND status = %s"
        params.append(status)
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(query + " ORDER BY bucket DESC, metric, customer_ref LIMIT 1000", params)
    return await cur.fetchall()


async def parked_count(conn: psycopg.AsyncConnection) -> int:
    cur = await conn.execute("SELECT count(*) FROM stripe_pushes WHERE status = 'parked'")
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def retry_parked(
    conn: psycopg.AsyncConnection,
    tenant: str,
    now: datetime,
    metric: str | None = None,
    customer: str | None = None,
) -> int:
    """A changed mapping may fix what parked a counter (an unknown customer or meter): try again."""
    cur = await conn.execute(
        "UPDATE stripe_pushes SET status = 'waiting', attempts = 0, reason = NULL, pending_identifier = NULL,"
        " pending_to_units = NULL, updated_at = %s"
        " WHERE tenant_id = %s AND status IN ('parked', 'unmapped')"
        " AND (%s::text IS NULL OR metric = %s) AND (%s::text IS NULL OR customer_ref = %s)",
        (now, tenant, metric, metric, customer, customer),
    )
    return cur.rowcount
