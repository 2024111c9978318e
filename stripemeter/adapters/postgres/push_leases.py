"""The Stripe writers' partition leases (``stripe_writer_leases``), and the push rows written before
rows carried their partition and period (migration 0010), which a writer assigns when it starts.

A writer claims the lease of each usage.deltas partition it is assigned; the epoch grows with each
claim, and every change of a push row names it (core/push_rows.py: ``Fence``), so the previous
holder's changes stop."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from stripemeter.core.push_plan import Key


async def claim(conn: psycopg.AsyncConnection, app_id: str, partition: int, owner: str, now: datetime) -> int:
    """Take a usage.deltas partition over: its epoch grows, so the previous holder's changes stop."""
    cur = await conn.execute(
        "INSERT INTO stripe_writer_leases (app_id, partition, owner, epoch, claimed_at)"
        " VALUES (%s, %s, %s, 1, %s) ON CONFLICT (app_id, partition) DO UPDATE"
        " SET owner = EXCLUDED.owner, epoch = stripe_writer_leases.epoch + 1,"
        " claimed_at = EXCLUDED.claimed_at"
        " RETURNING epoch",
        (app_id, partition, owner, now),
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def unassigned_rows(conn: psycopg.AsyncConnection, limit: int) -> list[dict[str, Any]]:
    """Rows written before partitions and periods were recorded (see migration 0010)."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "SELECT tenant_id, metric, customer_ref, bucket FROM stripe_pushes"
        " WHERE app_id IS NULL OR delta_partition IS NULL OR period_start IS NULL LIMIT %s",
        (limit,),
    )
    return await cur.fetchall()


async def assign_rows(
    conn: psycopg.AsyncConnection, app_id: str, rows: list[tuple[Key, int, datetime]]
) -> None:
    """Set app, partition and period of rows found by ``unassigned_rows``. Their status stays: an hour
    delivered before whole units were carried keeps what it holds until its stream changes again."""
    if not rows:
        return
    await conn.execute(
        "UPDATE stripe_pushes p SET app_id = %s, delta_partition = k.partition,"
        " period_start = k.period_start,"
        " version = p.version + 1"
        " FROM unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::integer[],"
        " %s::timestamptz[])"
        " AS k(tenant_id, metric, customer_ref, bucket, partition, period_start)"
        " WHERE p.tenant_id = k.tenant_id AND p.metric = k.metric AND p.customer_ref = k.customer_ref"
        " AND p.bucket = k.bucket",
        (
            app_id, [k[0] for k, _, _ in rows], [k[1] for k, _, _ in rows], [k[2] for k, _, _ in rows],
            [k[3] for k, _, _ in rows], [p for _, p, _ in rows], [s for _, _, s in rows],
        ),
    )  # fmt: skip
