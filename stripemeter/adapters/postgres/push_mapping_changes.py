"""What a mapping change does to the push rows it concerns (services/configuration.py): held while it
is saved, read again by the writer before anything is sent under the old mapping, moved to other
billing periods when a customer's anchor changed."""

from __future__ import annotations

from datetime import datetime

import psycopg

# A mapping changed: every counter hour it concerns that the writer may be deciding on changes version,
# so a decision made under the old mapping fails its compare-and-set and the writer reads again
# (read your writes); parked and unmapped ones are due again (the change may have fixed their cause).
MAPPING_CHANGED = """
WITH rows AS (
    SELECT tenant_id, metric, customer_ref, bucket, status AS was FROM stripe_pushes
    WHERE tenant_id = %(tenant)s AND status IN ('waiting', 'pending', 'parked', 'unmapped')
      AND (%(metric)s::text IS NULL OR metric = %(metric)s)
      AND (%(customer)s::text IS NULL OR customer_ref = %(customer)s)
    FOR UPDATE
), changed AS (
    UPDATE stripe_pushes p
    SET version = p.version + 1, updated_at = %(now)s,
        status = CASE WHEN r.was NOT IN ('parked', 'unmapped') THEN p.status
                      WHEN p.pending_request IS NULL THEN 'waiting' ELSE 'pending' END,
        attempts = CASE WHEN r.was IN ('parked', 'unmapped') THEN 0 ELSE p.attempts END,
        reason = CASE WHEN r.was IN ('parked', 'unmapped') THEN NULL ELSE p.reason END,
        refused_since = CASE WHEN r.was IN ('parked', 'unmapped') THEN NULL ELSE p.refused_since END,
        pending_attempt = p.pending_attempt
            + CASE WHEN r.was IN ('parked', 'unmapped') AND p.pending_request IS NOT NULL THEN 1 ELSE 0 END
    FROM rows r
    WHERE p.tenant_id = r.tenant_id AND p.metric = r.metric AND p.customer_ref = r.customer_ref
      AND p.bucket = r.bucket
    RETURNING r.was
)
SELECT count(*) FILTER (WHERE was IN ('parked', 'unmapped')) FROM changed
"""


async def lock_streams(
    conn: psycopg.AsyncConnection, tenant: str, metric: str | None = None, customer: str | None = None
) -> None:
    """Hold the counter hours of a metric or customer until the transaction ends: a writer recording a
    request under the mapping about to change waits, then finds the row moved on (``mapping_changed``)."""
    await conn.execute(
        "SELECT 1 FROM stripe_pushes WHERE tenant_id = %(tenant)s"
        " AND (%(metric)s::text IS NULL OR metric = %(metric)s)"
        " AND (%(customer)s::text IS NULL OR customer_ref = %(customer)s) FOR UPDATE",
        {"tenant": tenant, "metric": metric, "customer": customer},
    )


async def mapping_changed(
    conn: psycopg.AsyncConnection,
    tenant: str,
    now: datetime,
    metric: str | None = None,
    customer: str | None = None,
) -> int:
    """A metric or customer mapping changed: the counter hours it concerns are read again by the writer
    before anything is sent under the old mapping, and parked ones are tried again (a fixed meter or
    customer). A request still recorded as pending (it may have landed) is sent again unchanged, under
    a new idempotency key; a refused one was forgotten when it was refused. Returns how many counters
    were parked or unmapped."""
    cur = await conn.execute(
        MAPPING_CHANGED, {"tenant": tenant, "now": now, "metric": metric, "customer": customer}
    )
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def repartition_periods(
    conn: psycopg.AsyncConnection, tenant: str, customer: str, starts: dict[datetime, datetime]
) -> None:
    """A customer's billing anchor changed: its hours belong to other periods now (``starts``: bucket
    -> new period start), so their targets are computed again."""
    if not starts:
        return
    await conn.execute(
        "UPDATE stripe_pushes p SET period_start = k.period_start, version = p.version + 1,"
        " status = CASE WHEN p.status = 'synced' THEN 'waiting' ELSE p.status END"
        " FROM unnest(%s::timestamptz[], %s::timestamptz[]) AS k(bucket, period_start)"
        " WHERE p.tenant_id = %s AND p.customer_ref = %s AND p.bucket = k.bucket"
        " AND p.period_start IS DISTINCT FROM k.period_start",
        (list(starts), list(starts.values()), tenant, customer),
    )


async def buckets_of(conn: psycopg.AsyncConnection, tenant: str, customer: str) -> list[datetime]:
    cur = await conn.execute(
        "SELECT DISTINCT bucket FROM stripe_pushes WHERE tenant_id = %s AND customer_ref = %s",
        (tenant, customer),
    )
    return [r[0] for r in await cur.fetchall()]
