"""Whether a tenant has counted a metric: a replay names only metrics the tenant knows."""

from __future__ import annotations

import psycopg

COUNTED = """
SELECT EXISTS (SELECT 1 FROM counters WHERE tenant_id = %(tenant)s AND metric = %(metric)s)
    OR EXISTS (SELECT 1 FROM events WHERE tenant_id = %(tenant)s AND metric = %(metric)s)
"""


async def has_counted(conn: psycopg.AsyncConnection, tenant: str, metric: str) -> bool:
    """Whether the tenant has a counter or a stored event of ``metric``."""
    cur = await conn.execute(COUNTED, {"tenant": tenant, "metric": metric})
    row = await cur.fetchone()
    return bool(row and row[0])
