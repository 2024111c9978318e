"""The push rows as an operator pages through them (GET /v1/stripe/pushes)."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row


async def list_pushes(
    conn: psycopg.AsyncConnection,
    tenant: str,
    status: str | None,
    limit: int,
    after: tuple[Any, ...] | None = None,
) -> list[dict[str, Any]]:
    """Up to ``limit`` counter hours, newest first, after ``after`` (bucket, metric, customerRef): one
    range of stripe_pushes_by_tenant (or _by_status) per page."""
    query = (
        "SELECT tenant_id, metric, customer_ref, bucket, latest_micros, pushed_units, status, reason,"
        " attempts, updated_at, pending_request ->> 'identifier' AS pending_identifier"
        " FROM stripe_pushes WHERE tenant_id = %s"
    )
    params: list[Any] = [tenant]
    if status:
        query += " AND status = %s"
        params.append(status)
    if after is not None:
        query += " AND (bucket, metric, customer_ref) < (%s, %s, %s)"
        params.extend(after)
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        query + " ORDER BY bucket DESC, metric DESC, customer_ref DESC LIMIT %s", [*params, limit]
    )
    return await cur.fetchall()
