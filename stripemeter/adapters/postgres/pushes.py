"""The Stripe writer's state in PostgreSQL: ``stripe_pushes`` (per counter hour), the request log
``stripe_push_requests`` and the partition leases ``stripe_writer_leases``.

Every change of a push row made by a writer is a compare-and-set: it names the row version it read
(or the identifier of the pending request it acts on) and the epoch of the lease it holds on the row's
``usage.deltas`` partition, and changes nothing when either moved on. So a writer that lost the
partition, or read a row another writer or a new delta changed since, cannot overwrite it; it reads
again on its next round. Each function returns whether it changed the row.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row

from stripemeter.adapters.postgres.drop_covers import cover
from stripemeter.core.push_plan import Key, Request, Row


@dataclass(frozen=True)
class Latest:
    """A counter's newest total from usage.deltas, the partition it came from, and its period."""

    tenant_id: str
    metric: str
    customer_ref: str
    bucket: datetime
    total_micros: int
    seq: int
    app_id: str
    partition: int
    period_start: datetime


@dataclass(frozen=True)
class Stream:
    """The hours of one counter stream in one billing period, with the mappings that tie it to Stripe."""

    rows: list[Row]
    event_name: str | None
    aggregation: str
    stripe_customer: str | None
    billing_anchor: datetime | None = None


@dataclass(frozen=True)
class Fence:
    """Who may change a row: the app's writer holding the row's partition under this epoch."""

    app_id: str
    epoch: int
    partition: int


UPSERT_LATEST = """
INSERT INTO stripe_pushes (tenant_id, metric, customer_ref, bucket, latest_micros, latest_seq, app_id,
                           delta_partition, period_start, updated_at)
SELECT *, %s::timestamptz FROM unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::numeric[],
                                     %s::bigint[], %s::text[], %s::integer[], %s::timestamptz[])
ON CONFLICT (tenant_id, metric, customer_ref, bucket) DO UPDATE
SET latest_micros = EXCLUDED.latest_micros, latest_seq = EXCLUDED.latest_seq, app_id = EXCLUDED.app_id,
    delta_partition = EXCLUDED.delta_partition, period_start = EXCLUDED.period_start,
    updated_at = EXCLUDED.updated_at, version = stripe_pushes.version + 1,
    status = CASE WHEN stripe_pushes.status IN ('pending', 'parked') THEN stripe_pushes.status
                  ELSE 'waiting' END
WHERE stripe_pushes.latest_seq < EXCLUDED.latest_seq
RETURNING tenant_id, metric, customer_ref, bucket, app_id, delta_partition
"""

# A stream's rows live in one partition, the one its newest delta came from: the writer holding it
# pushes the whole stream (targets carry from hour to hour). Usually nothing moves; when a stream's
# deltas arrive in another partition (usage.deltas gained partitions), its other rows follow, version
# + 1, so the previous holder's compare-and-set fails. Rows are locked in key order; a writer meeting a
# deadlock with another one recording the same stream runs the (seq-guarded) recording again.
FOLLOW = """
WITH incoming AS (
    SELECT * FROM unnest(%(tenants)s::text[], %(metrics)s::text[], %(customers)s::text[], %(apps)s::text[],
                         %(partitions)s::integer[])
                  AS i(tenant_id, metric, customer_ref, app_id, delta_partition)
), moved AS (
    -- only new streams and streams that moved are written (and locked): usually none
    INSERT INTO stripe_push_streams (tenant_id, metric, customer_ref, app_id, delta_partition)
    SELECT i.* FROM incoming i
    LEFT JOIN stripe_push_streams s USING (tenant_id, metric, customer_ref)
    WHERE s.delta_partition IS DISTINCT FROM i.delta_partition OR s.app_id IS DISTINCT FROM i.app_id
    ORDER BY i.tenant_id, i.metric, i.customer_ref
    ON CONFLICT (tenant_id, metric, customer_ref) DO UPDATE
    SET app_id = EXCLUDED.app_id, delta_partition = EXCLUDED.delta_partition
    WHERE stripe_push_streams.delta_partition <> EXCLUDED.delta_partition
       OR stripe_push_streams.app_id IS DISTINCT FROM EXCLUDED.app_id
    RETURNING tenant_id, metric, customer_ref, delta_partition
), locked AS (
    SELECT p.tenant_id, p.metric, p.customer_ref, p.bucket, m.delta_partition
    FROM stripe_pushes p JOIN moved m USING (tenant_id, metric, customer_ref)
    WHERE p.delta_partition IS DISTINCT FROM m.delta_partition
    ORDER BY p.tenant_id, p.metric, p.customer_ref, p.bucket
    FOR UPDATE OF p
)
UPDATE stripe_pushes p SET delta_partition = l.delta_partition, version = p.version + 1,
                           updated_at = %(now)s
FROM locked l
WHERE p.tenant_id = l.tenant_id AND p.metric = l.metric AND p.customer_ref = l.customer_ref
  AND p.bucket = l.bucket
"""

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


def _params(key: Key, fence: Fence | None, now: datetime, **more: Any) -> dict[str, Any]:
    tenant, metric, customer, bucket = key
    out = {"tenant": tenant, "metric": metric, "customer": customer, "bucket": bucket, "now": now, **more}
    if fence is not None:
        out |= {"app": fence.app_id, "epoch": fence.epoch, "partition": fence.partition}
    return out


async def _changed(conn: psycopg.AsyncConnection, sql: str, params: dict[str, Any]) -> bool:
    """Run an UPDATE, or a statement whose result is ``SELECT count(*) FROM <the changed rows>``."""
    cur = await conn.execute(sql, params)
    if cur.description is None:
        return cur.rowcount > 0
    row = await cur.fetchone()
    return bool(row and row[0])


# --- what usage.deltas says -------------------------------------------------------------------------


async def record_latest(conn: psycopg.AsyncConnection, latest: list[Latest], now: datetime) -> None:
    """Keep the highest seq per counter; a change makes the counter due (version + 1), and the rest of
    its stream follows the partition of its newest changed hour (``FOLLOW``). Seq-guarded, so any
    number of writers may record the same counters, in any order."""
    best: dict[tuple[str, str, str, datetime], Latest] = {}
    for d in latest:
        key = (d.tenant_id, d.metric, d.customer_ref, d.bucket)
        if key not in best or best[key].seq < d.seq:
            best[key] = d
    rows = [best[key] for key in sorted(best)]  # key order: concurrent upserts never deadlock
    if not rows:
        return
    cur = await conn.execute(
        UPSERT_LATEST,
        (
            now,
            [d.tenant_id for d in rows],
            [d.metric for d in rows],
            [d.customer_ref for d in rows],
            [d.bucket for d in rows],
            [d.total_micros for d in rows],
            [d.seq for d in rows],
            [d.app_id for d in rows],
            [d.partition for d in rows],
            [d.period_start for d in rows],
        ),
    )
    newest: dict[tuple[str, str, str], tuple[datetime, str, int]] = {}
    for tenant, metric, customer, bucket, app, partition in await cur.fetchall():
        stream = (tenant, metric, customer)
        if stream not in newest or newest[stream][0] < bucket:
            newest[stream] = (bucket, app, partition)
    if newest:
        streams = sorted(newest)
        await conn.execute(
            FOLLOW,
            {
                "tenants": [s[0] for s in streams],
                "metrics": [s[1] for s in streams],
                "customers": [s[2] for s in streams],
                "apps": [newest[s][1] for s in streams],
                "partitions": [newest[s][2] for s in streams],
                "now": now,
            },
        )


# --- what the counters say ---------------------------------------------------------------------------

# A batch of the app's counters in key order after a cursor, with the seq of their push rows (NULL:
# none). Hours older than ``oldest`` are left out: Stripe would not take them.
COUNTERS_AFTER = """
SELECT c.tenant_id, c.metric, c.customer_ref, c.bucket, c.total_micros, c.seq, p.latest_seq
FROM (
    SELECT tenant_id, metric, customer_ref, bucket, total_micros, seq FROM counters
    WHERE app_id = %(app)s AND bucket >= %(oldest)s
      AND (bucket, tenant_id, metric, customer_ref) > (%(bucket)s, %(tenant)s, %(metric)s, %(customer)s)
    ORDER BY bucket, tenant_id, metric, customer_ref
    LIMIT %(limit)s
) c
LEFT JOIN stripe_pushes p USING (tenant_id, metric, customer_ref, bucket)
ORDER BY c.bucket, c.tenant_id, c.metric, c.customer_ref
"""

CounterKey = tuple[datetime, str, str, str]  # bucket, tenant, metric, customer: the counters' scan order


@dataclass(frozen=True)
class CounterRow:
    """A counter as the sink wrote it, and the seq its push row holds (None: it has none)."""

    tenant_id: str
    metric: str
    customer_ref: str
    bucket: datetime
    total_micros: int
    seq: int
    pushed_seq: int | None

    @property
    def scan_key(self) -> CounterKey:
        return (self.bucket, self.tenant_id, self.metric, self.customer_ref)

    @property
    def behind(self) -> bool:
        """Whether the push row misses this counter or an older total of it."""
        return self.pushed_seq is None or self.pushed_seq < self.seq


async def counters_after(
    conn: psycopg.AsyncConnection, app_id: str, oldest: datetime, after: CounterKey, limit: int
) -> list[CounterRow]:
    """Up to ``limit`` of the app's counters of hours from ``oldest`` on, after ``after`` in scan order."""
    bucket, tenant, metric, customer = after
    cur = await conn.execute(
        COUNTERS_AFTER,
        {"app": app_id, "oldest": oldest, "bucket": bucket, "tenant": tenant, "metric": metric,
         "customer": customer, "limit": limit},
    )  # fmt: skip
    return [
        CounterRow(t, m, c, b, int(total), int(seq), int(pushed) if pushed is not None else None)
        for t, m, c, b, total, seq, pushed in await cur.fetchall()
    ]


async def anchors(
    conn: psycopg.AsyncConnection, customers: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], datetime | None]:
    """Billing anchors of (tenant, customer) pairs; a customer without a mapping has none."""
    pairs = sorted(set(customers))
    if not pairs:
        return {}
    cur = await conn.execute(
        "SELECT tenant_id, customer_ref, billing_anchor FROM customer_mappings"
        " JOIN unnest(%s::text[], %s::text[]) AS k(tenant_id, customer_ref) USING (tenant_id, customer_ref)",
        ([t for t, _ in pairs], [c for _, c in pairs]),
    )
    found = {(t, c): a for t, c, a in await cur.fetchall()}
    return {pair: found.get(pair) for pair in pairs}


# --- the writer's round --------------------------------------------------------------------------------


async def due(
    conn: psycopg.AsyncConnection, app_id: str, partitions: list[int], now: datetime, streams: int = 200
) -> list[Stream]:
    """Streams of the app's given partitions with something to do, all hours of each period."""
    if not partitions:
        return []
    cur = conn.cursor(row_factory=dict_row)
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
        stream.rows.append(
            Row(
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
        )
    return list(grouped.values())


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


async def record_pending(
    conn: psycopg.AsyncConnection, row: Row, request: Request, fence: Fence, now: datetime
) -> bool:
    """Record the exact request before it is sent (and log it); only from the version read."""
    return await _changed(
        conn,
        RECORD_PENDING,
        _params(
            row.key, fence, now, version=row.version, identifier=request.identifier,
            request=orjson.dumps(request.wire()).decode(), timestamp=request.timestamp,
        ),
    )  # fmt: skip


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


async def mark_delivered(
    conn: psycopg.AsyncConnection,
    row: Row,
    request_identifier: str,
    to_units: int,
    synced: bool,
    recorded_version: int,
    fence: Fence,
    now: datetime,
    added: int | None = None,
) -> bool:
    """Stripe has the pending request: the hour holds ``to_units`` (a ``last`` request), or for a sum
    or count request, what it held plus ``added``, the request's value."""
    params = _params(
        row.key, fence, now, to_units=to_units, version=recorded_version, identifier=request_identifier,
        status="synced" if synced else "waiting", added=added,
    )  # fmt: skip
    return await _changed(conn, MARK_DELIVERED, params)


async def mark_attempt(
    conn: psycopg.AsyncConnection,
    row: Row,
    identifier: str,
    reason: str,
    new_key: bool,
    fence: Fence,
    now: datetime,
    refused: bool = False,
) -> bool:
    """The pending request failed for now: retried later, under a new idempotency key if ``new_key``.
    ``refused``: Stripe refused it for now; the first such refusal is remembered (``refused_since``)."""
    return await _changed(
        conn,
        f"UPDATE stripe_pushes SET attempts = attempts + 1, reason = %(reason)s, updated_at = %(now)s,"
        f" pending_attempt = pending_attempt + %(bump)s,"
        f" refused_since = CASE WHEN %(refused)s THEN coalesce(refused_since, %(now)s) ELSE refused_since END"
        f" WHERE {KEY} AND pending_request ->> 'identifier' = %(identifier)s AND {FENCE}",
        _params(
            row.key, fence, now, reason=reason[:1000], identifier=identifier, bump=int(new_key),
            refused=refused,
        ),
    )  # fmt: skip


async def refuse_pending(
    conn: psycopg.AsyncConnection, row: Row, identifier: str, reason: str, fence: Fence, now: datetime
) -> bool:
    """Stripe refused the pending request (it did not land): park the counter and forget the request,
    so that once the cause is fixed a new request is planned from the fixed mapping."""
    return await _drop_pending(
        conn, row, identifier, reason, fence, now, "status = 'parked', reason = %(reason)s"
    )


async def forget_pending(
    conn: psycopg.AsyncConnection, row: Row, identifier: str, reason: str, fence: Fence, now: datetime
) -> bool:
    """Stripe's summaries show the pending request never landed: plan a new one (new identifier)."""
    return await _drop_pending(
        conn, row, identifier, reason, fence, now, "status = 'waiting', attempts = 0, reason = NULL"
    )


async def _drop_pending(
    conn: psycopg.AsyncConnection,
    row: Row,
    identifier: str,
    reason: str,
    fence: Fence,
    now: datetime,
    row_change: str,
) -> bool:
    """Forget the row's pending request ``identifier`` (it did not land), apply ``row_change`` to the
    row, and record the request as refused with ``reason``; nothing changes unless the fence holds."""
    return await _changed(
        conn,
        f"""
        WITH dropped AS (
            UPDATE stripe_pushes SET {row_change}, pending_request = NULL, pending_since = NULL,
                   pending_attempt = 0, refused_since = NULL, version = version + 1, updated_at = %(now)s
            WHERE {KEY} AND pending_request ->> 'identifier' = %(identifier)s AND {FENCE}
            RETURNING 1
        ), logged AS (
            UPDATE stripe_push_requests SET status = 'refused', reason = %(reason)s, updated_at = %(now)s
            WHERE identifier = %(identifier)s AND EXISTS (SELECT 1 FROM dropped)
            RETURNING 1
        )
        SELECT count(*) FROM dropped
        """,
        _params(row.key, fence, now, reason=reason[:1000], identifier=identifier),
    )


async def park(
    conn: psycopg.AsyncConnection, row: Row, reason: str, fence: Fence, now: datetime, status: str = "parked"
) -> bool:
    """Park the row (or mark it ``unmapped``) as read; a pending request stays recorded: whether it
    landed is unknown, so it is sent again unchanged (under a new key) once unparked, and its refusals
    are counted afresh."""
    return await _changed(
        conn,
        f"UPDATE stripe_pushes SET status = %(status)s, reason = %(reason)s, version = version + 1,"
        f" updated_at = %(now)s, refused_since = NULL WHERE {KEY} AND version = %(version)s AND {FENCE}",
        _params(row.key, fence, now, status=status, reason=reason[:1000], version=row.version),
    )


async def mark_synced(conn: psycopg.AsyncConnection, row: Row, fence: Fence, now: datetime) -> bool:
    """Stripe holds the hour's target and nothing is pending: done until the next change."""
    return await _changed(
        conn,
        f"UPDATE stripe_pushes SET status = 'synced', attempts = 0, reason = NULL, updated_at = %(now)s"
        f" WHERE {KEY} AND version = %(version)s AND pending_request IS NULL AND {FENCE}",
        _params(row.key, fence, now, version=row.version),
    )


# --- leases ------------------------------------------------------------------------------------------


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


# --- operators, the API, Stripe's error reports -----------------------------------------------------------


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


async def parked_count(conn: psycopg.AsyncConnection) -> int:
    cur = await conn.execute("SELECT count(*) FROM stripe_pushes WHERE status = 'parked'")
    row = await cur.fetchone()
    return int(row[0]) if row else 0


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


@dataclass(frozen=True)
class Dropped:
    """A request Stripe accepted and then dropped (an error report names it)."""

    key: Key
    value: int
    was_delivered: bool
    mapping_fixed: bool = False  # the mapping changed since: due again, not parked
    covered: int = 0  # units of it corrections of the hour made up for already (they stand in for it)


async def drop_request(
    conn: psycopg.AsyncConnection, identifier: str, reason: str, now: datetime, temporary: bool = False
) -> Dropped | None:
    """Stripe reported (asynchronously) that the request never counted: the hour holds that much less
    than recorded, and the counter is parked with Stripe's reason until its cause is fixed - unless
    the mapping changed since the request was sent (the report came after the fix), or the reason
    passes by itself (``temporary``): then the counter is simply due again. Corrections of the hour
    recorded after the request (the reconciler made up for it already) stand in for it up to their
    amount (adapters/postgres/drop_covers.py): the hour keeps those units, so the writer does not push
    them again. Idempotent: a report delivered twice changes nothing the second time."""
    async with conn.transaction():
        cur = conn.cursor(row_factory=dict_row)
        # the counter's row first, then the request's: the order every other change takes them in
        await cur.execute(
            "SELECT 1 FROM stripe_pushes p JOIN stripe_push_requests r"
            " USING (tenant_id, metric, customer_ref, bucket) WHERE r.identifier = %s FOR UPDATE OF p",
            (identifier,),
        )
        await cur.execute(
            "SELECT tenant_id, metric, customer_ref, bucket, request, status, created_at,"
            " coalesce((SELECT aggregation FROM metric_mappings m WHERE m.tenant_id = r.tenant_id"
            "           AND m.metric = r.metric), 'sum') AS aggregation"
            " FROM stripe_push_requests r WHERE identifier = %s FOR UPDATE",
            (identifier,),
        )
        found = await cur.fetchone()
        if found is None or found["status"] in ("dropped", "refused"):
            return None
        key: Key = (found["tenant_id"], found["metric"], found["customer_ref"], found["bucket"])
        request = found["request"]
        value, delivered = int(request.get("value", 0)), found["status"] == "delivered"
        fixed = await _mapping_changed_since(cur, key, request)
        covered = 0
        if delivered and found["aggregation"] != "last":
            covered = await cover(cur, key, identifier, value, found["created_at"], now)
        params = _params(
            key, None, now, reason=reason[:1000], identifier=identifier, value=value - covered,
            status="waiting" if fixed or temporary else "parked",
        )  # fmt: skip
        if delivered:
            # sum and count hold what was delivered; a last hour holds what the request replaced
            await cur.execute(
                f"""UPDATE stripe_pushes SET status = %(status)s, reason = %(reason)s, version = version + 1,
                       updated_at = %(now)s,
                       pushed_units = CASE WHEN m.aggregation = 'last' THEN coalesce((
                           SELECT (r.request ->> 'toUnits')::bigint FROM stripe_push_requests r
                           WHERE r.tenant_id = %(tenant)s AND r.metric = %(metric)s
                             AND r.customer_ref = %(customer)s AND r.bucket = %(bucket)s
                             AND r.status = 'delivered' AND r.identifier <> %(identifier)s
                           ORDER BY r.created_at DESC LIMIT 1), 0)
                         ELSE pushed_units - %(value)s END
                    FROM (SELECT coalesce((SELECT aggregation FROM metric_mappings
                                           WHERE tenant_id = %(tenant)s AND metric = %(metric)s),
                                          'sum') AS aggregation) m
                    WHERE {KEY}""",
                params,
            )
        else:  # still pending here (its answer was lost): it did not land
            await cur.execute(
                f"UPDATE stripe_pushes SET status = %(status)s, reason = %(reason)s, pending_request = NULL,"
                f" pending_since = NULL, pending_attempt = 0, version = version + 1, updated_at = %(now)s"
                f" WHERE {KEY} AND pending_request ->> 'identifier' = %(identifier)s",
                params,
            )
        await cur.execute(
            "UPDATE stripe_push_requests SET status = 'dropped', reason = %(reason)s, updated_at = %(now)s"
            " WHERE identifier = %(identifier)s",
            params,
        )
    return Dropped(key, value, delivered, fixed, covered)


async def _mapping_changed_since(cur: psycopg.AsyncCursor[Any], key: Key, request: dict[str, Any]) -> bool:
    """Whether the counter's mappings now name another meter event name or Stripe customer than the
    request was sent with."""
    await cur.execute(
        "SELECT (SELECT stripe_meter_event_name FROM metric_mappings WHERE tenant_id = %s AND metric = %s),"
        " (SELECT stripe_customer_id FROM customer_mappings WHERE tenant_id = %s AND customer_ref = %s)",
        (key[0], key[1], key[0], key[2]),
    )
    row = await cur.fetchone()
    if row is None:
        return False
    current = list(row.values()) if isinstance(row, dict) else list(row)
    event_name, customer = current
    if event_name is None or customer is None:
        return False  # no mapping now: nothing was fixed
    sent_to = (request.get("payload") or {}).values()
    return event_name != request.get("event_name") or customer not in sent_to
