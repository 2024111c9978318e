"""Reading the event ledger and watermarks."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from stripemeter.adapters.postgres.ledger_partitions import time_window

# Newest first; the cursor is the (ts, source) of the last row of the previous page.


async def list_events(
    conn: psycopg.AsyncConnection,
    tenant: str,
    metric: str | None,
    customer: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    after: tuple[Any, ...] | None,
) -> list[dict[str, Any]]:
    query, params = events_query(tenant, metric, customer, since, until, limit, after)
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(query, params)
    return await cur.fetchall()


def events_query(
    tenant: str,
    metric: str | None,
    customer: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    after: tuple[Any, ...] | None,
) -> tuple[sql.Composed, dict[str, Any]]:
    """A page of the ledger, newest first: a range of events_by_tenant_time (with a metric,
    events_by_metric_time; with a customer too, events_by_stream), never a sort of the ledger."""
    where: list[sql.Composable] = [sql.SQL("tenant_id = %(tenant)s")]
    params: dict[str, Any] = {"tenant": tenant, "limit": limit}
    for column, value in (("metric", metric), ("customer_ref", customer)):
        if value is not None:
            where.append(sql.SQL("{} = {}").format(sql.Identifier(column), sql.Placeholder(column)))
            params[column] = value
    if since is not None:
        where.append(sql.SQL("ts >= %(since)s"))
        params["since"] = since
    if until is not None:
        where.append(sql.SQL("ts < %(until)s"))
        params["until"] = until
    if since is not None or until is not None:  # the partitions of the window only
        window = time_window("%(since)s" if since else None, "%(until)s" if until else None)
        where.append(sql.SQL(window))  # SQL text of this package, no input
    if after is not None:
        where.append(
            sql.SQL(
                "(ts, source_topic, source_partition, source_offset, source_index)"
                " < (%(a_ts)s, %(a_topic)s, %(a_partition)s, %(a_offset)s, %(a_index)s)"
            )
        )
        params.update(zip(("a_ts", "a_topic", "a_partition", "a_offset", "a_index"), after, strict=True))
    # key_reused: the key was used for another customer of the tenant too (a key is one event per
    # tenant and customer; see stripemeter/core/metering.py), looked up for the page's rows only
    query = sql.SQL(
        "SELECT page.*, EXISTS (SELECT 1 FROM events o WHERE o.tenant_id = page.tenant_id"
        " AND o.idempotency_key = page.idempotency_key AND o.customer_ref <> page.customer_ref) AS key_reused"
        " FROM (SELECT tenant_id, metric, customer_ref, quantity_micros, ts, idempotency_key, key_derived,"
        " resource_id, meta, outcome, source_topic, source_partition, source_offset, source_index,"
        " recorded_at FROM events WHERE {} ORDER BY ts DESC, source_topic DESC, source_partition DESC,"
        " source_offset DESC, source_index DESC LIMIT %(limit)s) page"
        " ORDER BY ts DESC, source_topic DESC, source_partition DESC, source_offset DESC, source_index DESC"
    ).format(sql.SQL(" AND ").join(where))
    return query, params


async def list_watermarks(
    conn: psycopg.AsyncConnection,
    tenant: str,
    metric: str,
    customer: str | None,
    limit: int,
    after: str | None = None,
) -> list[dict[str, Any]]:
    """Up to ``limit`` watermarks in customerRef order, after ``after`` (a page of the primary key)."""
    query = (
        "SELECT w.customer_ref, w.watermark, m.lateness_seconds FROM watermarks w"
        " LEFT JOIN metric_mappings m ON m.tenant_id = w.tenant_id AND m.metric = w.metric"
        " WHERE w.tenant_id = %s AND w.metric = %s"
    )
    params: list[Any] = [tenant, metric]
    if customer is not None:
        query += " AND w.customer_ref = %s"
        params.append(customer)
    if after is not None:
        query += " AND w.customer_ref > %s"
        params.append(after)
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(query + " ORDER BY w.customer_ref LIMIT %s", [*params, limit])
    return await cur.fetchall()
