"""The push rows in PostgreSQL (``stripe_pushes``, with the request log ``stripe_push_requests``), as
the Stripe writer reads and changes them: ``PostgresPushRows`` is core/push_rows.py's ``PushRows`` on
one connection. Each change is a compare-and-set on the row version (or the pending request's
identifier) and the lease epoch (``FENCE``: the lease table is adapters/postgres/push_leases.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row

from stripemeter.core.push_plan import Key, Request, Row
from stripemeter.core.push_rows import Delivery, Failure, Fence, Stream

# The streams of the given partitions that have something to do, each with all its hours of the
# period: targets carry fractions from hour to hour (plan.targets), so one changed hour can move later
# ones. A counter whose last attempt failed waits 0.25 s * 2^attempts (at most 30 s, with jitter; the
# writer skips such an hour of a stream picked for another hour: plan.retry_wait).
DUE = """
WITH due AS (
    SELECT DISTINCT tenant_id, metric, customer_ref, period_start
    FROM stripe_pushes
    -- unmapped counters wait for a mapping: saving one makes them waiting (mapping_changed)
    WHERE app_id = %(app)s AND delta_partition = ANY(%(partitions)s) AND status IN ('waiting', 'pending')
      AND period_start IS NOT NULL
      AND (attempts = 0
           OR updated_at + least(0.25 * power(2, attempts), 30) * (0.5 + random() / 2) * interval '1 second'
              <= %(now)s)
    LIMIT %(streams)s
)
SELECT p.tenant_id, p.metric, p.customer_ref, p.bucket, p.latest_micros, p.pushed_units, p.status,
       p.version, p.delta_partition, p.pending_request, extract(epoch FROM p.pending_since) AS pending_since,
       p.pending_attempt, p.attempts, p.period_start, extract(epoch FROM p.updated_at) AS updated_at,
       p.last_timestamp, extract(epoch FROM p.refused_since) AS refused_since,
       -- whether Stripe holds an event of the hour (it matters for last: 0 differs from nothing)
       coalesce(p.pushed_units <> 0 OR (m.aggregation = 'last' AND EXISTS (
           SELECT 1 FROM stripe_push_requests r
           WHERE r.tenant_id = p.tenant_id AND r.metric = p.metric AND r.customer_ref = p.customer_ref
             AND r.bucket = p.bucket AND r.status = 'delivered')), false) AS holds,
       m.stripe_meter_event_name, m.aggregation, c.stripe_customer_id, c.billing_anchor
FROM stripe_pushes p
JOIN due USING (tenant_id, metric, customer_ref, period_start)
LEFT JOIN metric_mappings m ON m.tenant_id = p.tenant_id AND m.metric = p.metric
LEFT JOIN customer_mappings c ON c.tenant_id = p.tenant_id AND c.customer_ref = p.customer_ref
ORDER BY p.tenant_id, p.metric, p.customer_ref, p.period_start, p.bucket
"""

KEY = "tenant_id = %(tenant)s AND metric = %(metric)s AND customer_ref = %(customer)s AND bucket = %(bucket)s"
FENCE = (
    "stripe_pushes.delta_partition = %(partition)s AND EXISTS (SELECT 1 FROM stripe_writer_leases l"
    " WHERE l.app_id = %(app)s AND l.partition = %(partition)s AND l.epoch = %(epoch)s)"
)


def row_params(key: Key, fence: Fence | None, now: datetime, **more: Any) -> dict[str, Any]:
    tenant, metric, customer, bucket = key
    out = {"tenant": tenant, "metric": metric, "customer": customer, "bucket": bucket, "now": now, **more}
    if fence is not None:
        out |= {"app": fence.app_id, "epoch": fence.epoch, "partition": fence.partition}
    return out


RECORD_PENDING = f"""
WITH recorded AS (
    UPDATE stripe_pushes
    SET pending_request = %(request)s, pending_since = %(now)s, pending_attempt = 0, status = 'pending',
        version = version + 1, updated_at = %(now)s, refused_since = NULL,
        -- the newest stamp of the hour: the next last request of the hour is stamped after it
        last_timestamp = greatest(last_timestamp, %(timestamp)s)
    WHERE {KEY} AND version = %(version)s AND pending_request IS NULL AND {FENCE}
    RETURNING tenant_id, metric, customer_ref, bucket
), logged AS (
    INSERT INTO stripe_push_requests (identifier, tenant_id, metric, customer_ref, bucket, request, status,
                                      created_at, updated_at)
    SELECT %(identifier)s, tenant_id, metric, customer_ref, bucket, %(request)s, 'sent', %(now)s, %(now)s
    FROM recorded
    RETURNING 1
)
SELECT count(*) FROM recorded
"""


MARK_DELIVERED = f"""
WITH delivered AS (
    UPDATE stripe_pushes
    -- a sum or count request adds its value to what the hour holds now: a report that an earlier
    -- request was dropped may have lowered it since this one was recorded; a last request replaces it
    SET pushed_units = CASE WHEN %(added)s::bigint IS NULL THEN %(to_units)s
                            ELSE pushed_units + %(added)s::bigint END,
        pending_request = NULL, pending_since = NULL, pending_attempt = 0, refused_since = NULL,
        attempts = 0, version = version + 1, updated_at = %(now)s,
        -- a counter parked meanwhile (a drop report) stays parked with its reason; otherwise synced
        -- only if nothing changed since the decision (a new delta made it waiting again)
        reason = CASE WHEN status = 'parked' THEN reason END,
        status = CASE WHEN status = 'parked' THEN 'parked'
                      WHEN version = %(version)s THEN %(status)s ELSE 'waiting' END
    WHERE {KEY} AND pending_request ->> 'identifier' = %(identifier)s AND {FENCE}
    RETURNING 1
), logged AS (
    UPDATE stripe_push_requests SET status = 'delivered', updated_at = %(now)s
    WHERE identifier = %(identifier)s AND EXISTS (SELECT 1 FROM delivered)
    RETURNING 1
)
SELECT count(*) FROM delivered
"""

MARK_ATTEMPT = f"""
UPDATE stripe_pushes SET attempts = attempts + 1, reason = %(reason)s, updated_at = %(now)s,
    pending_attempt = pending_attempt + %(bump)s,
    refused_since = CASE WHEN %(refused)s THEN coalesce(refused_since, %(now)s) ELSE refused_since END
WHERE {KEY} AND pending_request ->> 'identifier' = %(identifier)s AND {FENCE}
"""

# Forget the row's pending request (it did not land), apply a change to the row (``{row_change}``), and
# record the request as refused with the reason; nothing changes unless the fence holds.
DROP_PENDING = f"""
WITH dropped AS (
    UPDATE stripe_pushes SET {{row_change}}, pending_request = NULL, pending_since = NULL,
           pending_attempt = 0, refused_since = NULL, version = version + 1, updated_at = %(now)s
    WHERE {KEY} AND pending_request ->> 'identifier' = %(identifier)s AND {FENCE}
    RETURNING 1
), logged AS (
    UPDATE stripe_push_requests SET status = 'refused', reason = %(reason)s, updated_at = %(now)s
    WHERE identifier = %(identifier)s AND EXISTS (SELECT 1 FROM dropped)
    RETURNING 1
)
SELECT count(*) FROM dropped
"""


class PostgresPushRows:
    """The writer's push rows on one connection (core/push_rows.py: ``PushRows``)."""

    def __init__(self, conn: psycopg.AsyncConnection):
        self.conn = conn

    async def due(
        self, app_id: str, partitions: list[int], now: datetime, streams: int = 200
    ) -> list[Stream]:
        """Streams of the app's given partitions with something to do, all hours of each period."""
        if not partitions:
            return []
        cur = self.conn.cursor(row_factory=dict_row)
        await cur.execute(DUE, {"app": app_id, "partitions": partitions, "now": now, "streams": streams})
        grouped: dict[tuple[Any, ...], Stream] = {}
        for r in await cur.fetchall():
            group = (r["tenant_id"], r["metric"], r["customer_ref"], r["period_start"])
            stream = grouped.get(group)
            if stream is None:
                stream = grouped[group] = Stream(
                    [], r["stripe_meter_event_name"], r["aggregation"] or "sum", r["stripe_customer_id"],
                    r["billing_anchor"],
                )  # fmt: skip
            stream.rows.append(_row(r))
        return list(grouped.values())

    async def parked_count(self) -> int:
        cur = await self.conn.execute("SELECT count(*) FROM stripe_pushes WHERE status = 'parked'")
        row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def record_pending(self, row: Row, request: Request, fence: Fence, now: datetime) -> bool:
        """Record the exact request before it is sent (and log it); only from the version read."""
        return await self._changed(
            RECORD_PENDING,
            row_params(
                row.key, fence, now, version=row.version, identifier=request.identifier,
                request=orjson.dumps(request.wire()).decode(), timestamp=request.timestamp,
            ),
        )  # fmt: skip

    async def mark_delivered(self, row: Row, delivery: Delivery, fence: Fence, now: datetime) -> bool:
        """Stripe has the pending request: the hour holds ``to_units`` (a ``last`` request), or for a sum
        or count request, what it held plus ``added``, the request's value. Synced only if the row is
        still at the version read (``row.version``): a new delta since makes it waiting."""
        params = row_params(
            row.key, fence, now, to_units=delivery.to_units, version=row.version,
            identifier=delivery.identifier, status="synced" if delivery.synced else "waiting",
            added=delivery.added,
        )  # fmt: skip
        return await self._changed(MARK_DELIVERED, params)

    async def mark_attempt(
        self, row: Row, failure: Failure, fence: Fence, now: datetime, *, new_key: bool, refused: bool = False
    ) -> bool:
        """The pending request failed for now: retried later, under a new idempotency key if ``new_key``.
        ``refused``: Stripe refused it for now; the first such refusal is remembered (``refused_since``)."""
        return await self._changed(
            MARK_ATTEMPT,
            row_params(
                row.key, fence, now, reason=failure.reason[:1000], identifier=failure.identifier,
                bump=int(new_key), refused=refused,
            ),
        )  # fmt: skip

    async def refuse_pending(self, row: Row, failure: Failure, fence: Fence, now: datetime) -> bool:
        """Stripe refused the pending request (it did not land): park the counter and forget the request,
        so that once the cause is fixed a new request is planned from the fixed mapping."""
        return await self._drop_pending(row, failure, fence, now, "status = 'parked', reason = %(reason)s")

    async def forget_pending(self, row: Row, failure: Failure, fence: Fence, now: datetime) -> bool:
        """Stripe's summaries show the pending request never landed: plan a new one (new identifier)."""
        return await self._drop_pending(
            row, failure, fence, now, "status = 'waiting', attempts = 0, reason = NULL"
        )

    async def park(self, row: Row, reason: str, fence: Fence, now: datetime, status: str = "parked") -> bool:
        """Park the row (or mark it ``unmapped``) as read; a pending request stays recorded: whether it
        landed is unknown, so it is sent again unchanged (under a new key) once unparked, and its refusals
        are counted afresh."""
        return await self._changed(
            f"UPDATE stripe_pushes SET status = %(status)s, reason = %(reason)s, version = version + 1,"
            f" updated_at = %(now)s, refused_since = NULL WHERE {KEY} AND version = %(version)s AND {FENCE}",
            row_params(row.key, fence, now, status=status, reason=reason[:1000], version=row.version),
        )

    async def mark_synced(self, row: Row, fence: Fence, now: datetime) -> bool:
        """Stripe holds the hour's target and nothing is pending: done until the next change."""
        return await self._changed(
            f"UPDATE stripe_pushes SET status = 'synced', attempts = 0, reason = NULL, updated_at = %(now)s"
            f" WHERE {KEY} AND version = %(version)s AND pending_request IS NULL AND {FENCE}",
            row_params(row.key, fence, now, version=row.version),
        )

    async def _drop_pending(
        self, row: Row, failure: Failure, fence: Fence, now: datetime, row_change: str
    ) -> bool:
        return await self._changed(
            DROP_PENDING.format(row_change=row_change),
            row_params(row.key, fence, now, reason=failure.reason[:1000], identifier=failure.identifier),
        )

    async def _changed(self, sql: str, params: dict[str, Any]) -> bool:
        """Run an UPDATE, or a statement whose result is ``SELECT count(*) FROM <the changed rows>``."""
        cur = await self.conn.execute(sql, params)
        if cur.description is None:
            return cur.rowcount > 0
        row = await cur.fetchone()
        return bool(row and row[0])


def _row(r: dict[str, Any]) -> Row:
    """A row of ``DUE`` as the writer reads it."""
    return Row(
        key=(r["tenant_id"], r["metric"], r["customer_ref"], r["bucket"]),
        latest_micros=int(r["latest_micros"]),
        pushed_units=int(r["pushed_units"]),
        status=r["status"],
        version=int(r["version"]),
        delta_partition=int(r["delta_partition"]),
        pending_raw=r["pending_request"],
        pending_since=float(r["pending_since"]) if r["pending_since"] is not None else None,
        pending_attempt=int(r["pending_attempt"]),
        attempts=int(r["attempts"]),
        updated_at=float(r["updated_at"]),
        holds=bool(r["holds"]),
        last_timestamp=int(r["last_timestamp"]) if r["last_timestamp"] is not None else None,
        refused_since=float(r["refused_since"]) if r["refused_since"] is not None else None,
    )
