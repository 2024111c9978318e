"""Which Stripe meters a tenant may map its metrics to (migration 0019): granted by an operator."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row


async def granted(conn: psycopg.AsyncConnection, tenant: str, event_name: str) -> bool:
    cur = await conn.execute(
        "SELECT 1 FROM tenant_meters WHERE tenant_id = %s AND event_name = %s FOR SHARE", (tenant, event_name)
    )
    return await cur.fetchone() is not None


async def grant(conn: psycopg.AsyncConnection, tenant: str, event_name: str) -> dict[str, Any]:
    """The grant (made now, or the one already there)."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "INSERT INTO tenant_meters (tenant_id, event_name) VALUES (%s, %s) ON CONFLICT DO NOTHING",
        (tenant, event_name),
    )
    await cur.execute(
        "SELECT tenant_id, event_name, granted_at FROM tenant_meters"
        " WHERE tenant_id = %s AND event_name = %s",
        (tenant, event_name),
    )
    row = await cur.fetchone()
    assert row is not None
    return row


async def metrics_using(conn: psycopg.AsyncConnection, tenant: str, event_name: str) -> list[str]:
    cur = await conn.execute(
        "SELECT metric FROM metric_mappings WHERE tenant_id = %s AND stripe_meter_event_name = %s"
        " ORDER BY metric",
        (tenant, event_name),
    )
    return [metric for (metric,) in await cur.fetchall()]


async def revoke(conn: psycopg.AsyncConnection, tenant: str, event_name: str) -> bool:
    cur = await conn.execute(
        "DELETE FROM tenant_meters WHERE tenant_id = %s AND event_name = %s", (tenant, event_name)
    )
    return cur.rowcount > 0


async def list_grants(
    conn: psycopg.AsyncConnection, tenant: str, limit: int, after: str | None = None
) -> list[dict[str, Any]]:
    """Up to ``limit`` of the tenant's grants in event-name order, after ``after``: a primary-key range."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "SELECT tenant_id, event_name, granted_at FROM tenant_meters"
        " WHERE tenant_id = %s AND event_name > %s ORDER BY event_name LIMIT %s",
        (tenant, "" if after is None else after, limit),
    )
    return await cur.fetchall()
