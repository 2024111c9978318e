"""Audited corrections of counters (``adjustments`` with target 'counter').

A row is recorded ('pending') before its correction is sent, marked 'applied' with where the
correction landed once the broker has it, and given the answer the API returned (``response_status``,
``response_body``) once done: a retry with the same Idempotency-Key returns that answer and sends
nothing (see api/adjustments.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row


async def aggregation_of(conn: psycopg.AsyncConnection, tenant: str, metric: str) -> str | None:
    cur = await conn.execute(
        "SELECT aggregation FROM metric_mappings WHERE tenant_id = %s AND metric = %s", (tenant, metric)
    )
    row = await cur.fetchone()
    return row[0] if row else None


def lock_name(adjustment_id: str) -> str:
    """The advisory lock that lets one request per adjustment id run at a time (``locks.held``)."""
    return f"stripemeter-adjustment:{adjustment_id}"


async def find(conn: psycopg.AsyncConnection, adjustment_id: str) -> dict[str, Any] | None:
    """The row, with the stored answer's body as the exact JSON text it was sent as."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "SELECT *, response_body::text AS response_text FROM adjustments WHERE adjustment_id = %s",
        (adjustment_id,),
    )
    return await cur.fetchone()


async def record(
    conn: psycopg.AsyncConnection,
    adjustment_id: str,
    key: tuple[str, str, str],
    bucket: datetime,
    ts: datetime,
    delta_micros: int,
    reason: str,
    now: datetime,
) -> dict[str, Any]:
    """Insert a new adjustment, 'pending' until its correction is sent."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "INSERT INTO adjustments (adjustment_id, tenant_id, metric, customer_ref, bucket, ts, delta_micros,"
        " reason, target, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'counter', %s) RETURNING *",
        (adjustment_id, *key, bucket, ts, delta_micros, reason, now),
    )
    row = await cur.fetchone()
    assert row is not None
    return row


async def mark_applied(
    conn: psycopg.AsyncConnection, adjustment_id: str, now: datetime, partition: int, offset: int
) -> dict[str, Any]:
    """Sent to the meter: its control message is at ``offset`` of keyed ``partition``."""
    return await _update(
        conn,
        "status = 'applied', applied_at = coalesce(applied_at, %s), keyed_partition = %s, keyed_offset = %s",
        (now, partition, offset, adjustment_id),
    )


async def mark_visible(conn: psycopg.AsyncConnection, adjustment_id: str, now: datetime) -> dict[str, Any]:
    """The counter shows the correction."""
    return await _update(conn, "visible_at = coalesce(visible_at, %s)", (now, adjustment_id))


async def store_response(conn: psycopg.AsyncConnection, adjustment_id: str, status: int, body: str) -> None:
    """The answer given (``body``: its exact JSON text): what a retry with the same key returns."""
    await conn.execute(
        "UPDATE adjustments SET response_status = %s, response_body = %s::json WHERE adjustment_id = %s",
        (status, body, adjustment_id),
    )


async def _update(conn: psycopg.AsyncConnection, assignments: str, params: tuple[Any, ...]) -> dict[str, Any]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(f"UPDATE adjustments SET {assignments} WHERE adjustment_id = %s RETURNING *", params)
    row = await cur.fetchone()
    assert row is not None
    return row


async def list_rows(
    conn: psycopg.AsyncConnection,
    tenant: str,
    metric: str | None,
    customer: str | None,
    limit: int,
    after: tuple[Any, ...] | None = None,
) -> list[dict[str, Any]]:
    """Up to ``limit`` adjustments, newest first, after ``after`` (createdAt, adjustmentId): a range of
    adjustments_by_tenant (each condition written only when present, so it stays an index condition)."""
    query = "SELECT * FROM adjustments WHERE tenant_id = %s"
    params: list[Any] = [tenant]
    if metric is not None:
        query += " AND metric = %s"
        params.append(metric)
    if customer is not None:
        query += " AND customer_ref = %s"
        params.append(customer)
    if after is not None:
        query += " AND (created_at, adjustment_id) < (%s, %s)"
        params.extend(after)
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(query + " ORDER BY created_at DESC, adjustment_id DESC LIMIT %s", [*params, limit])
    return await cur.fetchall()
