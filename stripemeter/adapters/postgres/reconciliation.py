"""Reconciliation in PostgreSQL: what it reads (counters, writer state, late events, corrections)
and what it stores (runs, items, the latest verdict per item, corrections sent to Stripe)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

import orjson
import psycopg
from psycopg.rows import dict_row

from stripemeter.adapters.postgres.drop_covers import give_back, lock_hour_of_correction
from stripemeter.adapters.postgres.ledger_partitions import time_window
from stripemeter.core.push_plan import Request
from stripemeter.domain.units import MICROS, floor_units

# Per hour: the newest local total (counters snapshot or the writer's copy, whichever has the higher
# seq), what the writer delivered, and when the hour last changed (a local change, or a finished push);
# the revision grows with every change of the counter or the writer's row (seq, version).
HOURS = """
SELECT coalesce(c.metric, p.metric) AS metric,
       coalesce(c.customer_ref, p.customer_ref) AS customer_ref,
       coalesce(c.bucket, p.bucket) AS bucket,
       CASE WHEN p.latest_seq IS NOT NULL AND (c.seq IS NULL OR p.latest_seq > c.seq)
            THEN p.latest_micros ELSE c.total_micros END AS local_micros,
       p.pushed_units, p.status, p.reason,
       coalesce(c.seq, 0) + coalesce(p.version, 0) AS revision,
       extract(epoch FROM CASE WHEN p.status = 'synced' THEN greatest(c.updated_at, p.updated_at)
                               ELSE coalesce(c.updated_at, p.updated_at) END) AS changed_at
FROM (SELECT * FROM counters WHERE tenant_id = %(tenant)s AND bucket >= %(start)s AND bucket < %(end)s
      AND (%(metric)s::text IS NULL OR metric = %(metric)s)
      AND (%(customer)s::text IS NULL OR customer_ref = %(customer)s)) c
FULL JOIN (SELECT * FROM stripe_pushes WHERE tenant_id = %(tenant)s AND bucket >= %(start)s
           AND bucket < %(end)s AND (%(metric)s::text IS NULL OR metric = %(metric)s)
           AND (%(customer)s::text IS NULL OR customer_ref = %(customer)s)) p
  ON c.metric = p.metric AND c.customer_ref = p.customer_ref AND c.bucket = p.bucket
"""

# Too-late events waiting for a replay: the events a replay of the range would count (PENDING_LATE in
# stripemeter/adapters/postgres/replay.py: one per idempotency key and customer, the first received, none
# the stream counted), and also those claimed by a correction an apply recorded but did not see sent
# (still waiting).
LATE = f"""
SELECT metric, customer_ref, date_trunc('hour', ts) AS bucket, count(*) AS n, sum(quantity_micros) AS micros
FROM (
    SELECT DISTINCT ON (e.idempotency_key, e.customer_ref) e.metric, e.customer_ref, e.ts, e.quantity_micros
    FROM events e
    WHERE e.tenant_id = %(tenant)s AND e.outcome = 'late' AND e.ts >= %(start)s AND e.ts < %(end)s
      AND {time_window("%(start)s", "%(end)s")}
      AND (%(metric)s::text IS NULL OR e.metric = %(metric)s)
      AND NOT EXISTS (SELECT 1 FROM replayed_keys r
                      LEFT JOIN replay_corrections c ON c.correction_id = r.correction_id
                      WHERE r.tenant_id = e.tenant_id AND r.idempotency_key = e.idempotency_key
                        AND r.customer_ref = e.customer_ref
                        -- claimed by a correction an apply recorded but did not see sent: still waiting
                        AND c.status IS DISTINCT FROM 'recorded')
      AND NOT EXISTS (SELECT 1 FROM events d
                      WHERE d.tenant_id = e.tenant_id AND d.idempotency_key = e.idempotency_key
                        AND d.customer_ref = e.customer_ref AND d.outcome = 'counted')
    ORDER BY e.idempotency_key, e.customer_ref, e.source_topic, e.source_partition, e.source_offset,
             e.source_index
) waiting
GROUP BY 1, 2, 3
"""

# Per hour, the reconciler's corrections that may be in Stripe (refused or dropped ones did not land):
# the newest one's time, and whether one is still unanswered ('pending': it may have landed; the hour
# is in flight until Stripe answers it), and how many there are (one refused or dropped since leaves).
CORRECTIONS = """
SELECT metric, customer_ref, bucket, extract(epoch FROM max(coalesce(applied_at, created_at))) AS at,
       bool_or(status = 'pending') AS pending, count(*) AS n
FROM adjustments
WHERE target = 'stripe' AND tenant_id = %(tenant)s AND bucket >= %(start)s AND bucket < %(end)s
  AND (%(metric)s::text IS NULL OR metric = %(metric)s) AND status NOT IN ('failed', 'dropped')
GROUP BY 1, 2, 3
"""

# What Stripe took for the given hours, in delivery order: the writer's delivered requests ('push':
# the units added, and the value a last hour holds after it) and the reconciler's applied corrections
# ('correction', with the value Stripe showed when it was decided); and the units corrections stand in
# for ('cover': part of pushed_units no delivered request carries).
STEPS = """
WITH k AS (
    SELECT * FROM unnest(%(metrics)s::text[], %(customers)s::text[], %(buckets)s::timestamptz[])
        AS k(metric, customer_ref, bucket)
)
SELECT r.metric, r.customer_ref, r.bucket, 'push' AS kind, extract(epoch FROM r.updated_at) AS at,
       coalesce((r.request ->> 'value')::bigint, 0) AS value, (r.request ->> 'toUnits')::bigint AS to_units,
       NULL::bigint AS seen
FROM stripe_push_requests r JOIN k USING (metric, customer_ref, bucket)
WHERE r.tenant_id = %(tenant)s AND r.status = 'delivered'
UNION ALL
SELECT a.metric, a.customer_ref, a.bucket, 'correction', extract(epoch FROM a.applied_at),
       floor(a.delta_micros / 1000000)::bigint, NULL, a.stripe_seen
FROM adjustments a JOIN k USING (metric, customer_ref, bucket)
WHERE a.tenant_id = %(tenant)s AND a.target = 'stripe' AND a.status = 'applied'
UNION ALL
SELECT r.metric, r.customer_ref, r.bucket, 'cover', NULL, sign((r.request ->> 'value')::bigint) * c.units,
       NULL, NULL
FROM stripe_drop_covers c JOIN stripe_push_requests r USING (identifier)
     JOIN k USING (metric, customer_ref, bucket)
WHERE r.tenant_id = %(tenant)s
ORDER BY at NULLS FIRST
"""


def _range(tenant: str, metric: str | None, start: datetime, end: datetime) -> dict[str, Any]:
    return {"tenant": tenant, "metric": metric, "start": start, "end": end}


async def _rows(conn: psycopg.AsyncConnection, query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(query, params)
    return await cur.fetchall()


async def hours(
    conn: psycopg.AsyncConnection,
    tenant: str,
    metric: str | None,
    start: datetime,
    end: datetime,
    customer: str | None = None,
) -> list[dict[str, Any]]:
    return await _rows(conn, HOURS, {**_range(tenant, metric, start, end), "customer": customer})


async def late_events(
    conn: psycopg.AsyncConnection, tenant: str, metric: str | None, start: datetime, end: datetime
) -> list[dict[str, Any]]:
    return await _rows(conn, LATE, _range(tenant, metric, start, end))


async def recent_corrections(
    conn: psycopg.AsyncConnection, tenant: str, metric: str | None, start: datetime, end: datetime
) -> list[dict[str, Any]]:
    return await _rows(conn, CORRECTIONS, _range(tenant, metric, start, end))


async def steps(
    conn: psycopg.AsyncConnection, tenant: str, hours: list[tuple[str, str, datetime]]
) -> list[dict[str, Any]]:
    """What Stripe took for each (metric, customer, bucket) of ``hours``, in delivery order (see STEPS)."""
    if not hours:
        return []
    params = {
        "tenant": tenant,
        "metrics": [m for m, _, _ in hours],
        "customers": [c for _, c, _ in hours],
        "buckets": [b for _, _, b in hours],
    }
    return await _rows(conn, STEPS, params)


# Every (tenant, metric, customer) mapped to a (meter event name, Stripe customer) pair of the tenant's
# that more than one of them maps to, across tenants (indexed by event name and Stripe customer).
SHARED_PAIRS = """
WITH mine AS (
    SELECT DISTINCT m.stripe_meter_event_name AS event_name, c.stripe_customer_id AS customer
    FROM metric_mappings m JOIN customer_mappings c USING (tenant_id)
    WHERE m.tenant_id = %(tenant)s
), members AS (
    SELECT m.stripe_meter_event_name AS event_name, c.stripe_customer_id AS customer, m.tenant_id, m.metric,
           c.customer_ref, m.aggregation
    FROM mine
    JOIN metric_mappings m ON m.stripe_meter_event_name = mine.event_name
    JOIN customer_mappings c ON c.stripe_customer_id = mine.customer AND c.tenant_id = m.tenant_id
)
SELECT event_name, customer, tenant_id, metric, customer_ref, aggregation
FROM members
WHERE (event_name, customer) IN (SELECT event_name, customer FROM members GROUP BY 1, 2 HAVING count(*) > 1)
ORDER BY 1, 2, 3, 4, 5
"""


async def shared_pairs(
    conn: psycopg.AsyncConnection, tenant: str
) -> list[tuple[str, str, str, str, str, str]]:
    """(event name, Stripe customer, tenant, metric, customer, aggregation) of every stream that maps to
    a Stripe pair of ``tenant``'s that other streams map to as well."""
    cur = await conn.execute(SHARED_PAIRS, {"tenant": tenant})
    return [(e, s, t, m, c, a) for e, s, t, m, c, a in await cur.fetchall()]


async def tenants(conn: psycopg.AsyncConnection, since: datetime) -> list[str]:
    """Tenants with a mapping or a counter since ``since``: the ones a scheduled run checks."""
    cur = await conn.execute(
        "SELECT tenant_id FROM metric_mappings"
        " UNION SELECT DISTINCT tenant_id FROM counters WHERE bucket >= %s ORDER BY 1",
        (since,),
    )
    return [r[0] for r in await cur.fetchall()]


async def billing_anchors(conn: psycopg.AsyncConnection, tenant: str) -> list[datetime | None]:
    """The billing anchors of the tenant's customers (None: the calendar month), each once."""
    cur = await conn.execute(
        "SELECT DISTINCT billing_anchor FROM customer_mappings WHERE tenant_id = %s", (tenant,)
    )
    return [row[0] for row in await cur.fetchall()]


# --- the schedule -----------------------------------------------------------------------------------

SCHEDULED_PASS = "reconcile"

# the pass is claimed when the last one started an interval ago or more, or more than an interval
# ahead (a clock that was moved back); workers' clocks may differ by less than an interval
CLAIM_PASS = """
INSERT INTO reconciliation_schedule AS s (name, started_at, started_by)
VALUES (%(name)s, %(now)s, %(by)s)
ON CONFLICT (name) DO UPDATE SET started_at = EXCLUDED.started_at, started_by = EXCLUDED.started_by
WHERE s.started_at <= %(now)s - make_interval(secs => %(interval)s)
   OR s.started_at > %(now)s + make_interval(secs => %(interval)s)
RETURNING started_at
"""


async def claim_scheduled_pass(
    conn: psycopg.AsyncConnection, now: datetime, interval_seconds: float, by: str
) -> bool:
    """Whether this worker makes the scheduled pass starting ``now``: no other worker started one within
    the interval. Atomic (one row); the caller holds the schedule's lock besides, so passes never overlap."""
    cur = await conn.execute(
        CLAIM_PASS, {"name": SCHEDULED_PASS, "now": now, "by": by, "interval": float(interval_seconds)}
    )
    return await cur.fetchone() is not None


async def last_scheduled_pass(conn: psycopg.AsyncConnection) -> datetime | None:
    """When the newest scheduled pass started, whichever worker made it."""
    cur = await conn.execute(
        "SELECT started_at FROM reconciliation_schedule WHERE name = %s", (SCHEDULED_PASS,)
    )
    row = await cur.fetchone()
    return row[0] if row else None


# --- how far Stripe's summaries lag --------------------------------------------------------------------

RECORD_LAGS = """
INSERT INTO stripe_summary_lags AS l (app_id, tenant_id, metric, customer_ref, bucket, unseen_since,
                                      lag_seconds, observed_at)
SELECT %(app)s, %(tenant)s, k.*, %(now)s
FROM unnest(%(metrics)s::text[], %(customers)s::text[], %(buckets)s::timestamptz[],
            %(since)s::double precision[], %(seconds)s::double precision[]) AS k
ON CONFLICT (app_id, tenant_id, metric, customer_ref, bucket, unseen_since) DO UPDATE
SET lag_seconds = greatest(l.lag_seconds, EXCLUDED.lag_seconds), observed_at = EXCLUDED.observed_at
WHERE NOT l.shown
"""

CONFIRM_LAGS = """
UPDATE stripe_summary_lags l SET shown = true, observed_at = %(now)s
FROM unnest(%(metrics)s::text[], %(customers)s::text[], %(buckets)s::timestamptz[],
            %(since)s::double precision[]) AS k(metric, customer_ref, bucket, unseen_since)
WHERE l.app_id = %(app)s AND l.tenant_id = %(tenant)s AND l.metric = k.metric
  AND l.customer_ref = k.customer_ref AND l.bucket = k.bucket AND l.unseen_since = k.unseen_since
  AND NOT l.shown
"""

LagKey = tuple[str, str, datetime, float]  # metric, customer, bucket, unseen since (unix s)


def _lag_params(app: str, tenant: str, keys: list[LagKey], now: datetime) -> dict[str, Any]:
    return {
        "app": app,
        "tenant": tenant,
        "metrics": [k[0] for k in keys],
        "customers": [k[1] for k in keys],
        "buckets": [k[2] for k in keys],
        "since": [k[3] for k in keys],
        "now": now,
    }


async def record_lags(
    conn: psycopg.AsyncConnection, app: str, tenant: str, lags: list[tuple[LagKey, float]], now: datetime
) -> None:
    """Hours whose summary did not show a step delivered at ``unseen since``, seen ``seconds`` after."""
    if lags:
        params = _lag_params(app, tenant, [k for k, _ in lags], now) | {"seconds": [s for _, s in lags]}
        await conn.execute(RECORD_LAGS, params)


async def confirm_lags(
    conn: psycopg.AsyncConnection, app: str, tenant: str, shown: list[LagKey], now: datetime
) -> None:
    """A read showed these steps: the lags recorded for them were Stripe's, not losses."""
    if shown:
        await conn.execute(CONFIRM_LAGS, _lag_params(app, tenant, shown, now))


async def open_lags(
    conn: psycopg.AsyncConnection, app: str, tenant: str, since: datetime, now: datetime
) -> set[tuple[str, str, datetime]]:
    """(metric, customer, bucket) of hours seen lagging since ``since`` and not seen caught up yet."""
    cur = await conn.execute(
        "SELECT DISTINCT metric, customer_ref, bucket FROM stripe_summary_lags"
        " WHERE app_id = %s AND tenant_id = %s AND NOT shown AND observed_at BETWEEN %s AND %s",
        (app, tenant, since, now),
    )
    return {(m, c, b) for m, c, b in await cur.fetchall()}


async def longest_lag(
    conn: psycopg.AsyncConnection, app: str, since: datetime, now: datetime
) -> float | None:
    """The longest lag of Stripe's summaries the app's processes confirmed between ``since`` and
    ``now``; older records (and lags never confirmed: losses) are forgotten."""
    await conn.execute("DELETE FROM stripe_summary_lags WHERE app_id = %s AND observed_at < %s", (app, since))
    cur = await conn.execute(
        "SELECT max(lag_seconds) FROM stripe_summary_lags"
        " WHERE app_id = %s AND shown AND observed_at BETWEEN %s AND %s",
        (app, since, now),
    )
    row = await cur.fetchone()
    return float(row[0]) if row and row[0] is not None else None


# --- runs -------------------------------------------------------------------------------------------


async def start_run(
    conn: psycopg.AsyncConnection,
    run_id: str,
    tenant: str,
    metric: str | None,
    period: str,
    trigger: str,
    epsilon: float,
) -> None:
    await conn.execute(
        "INSERT INTO reconciliation_runs (run_id, tenant_id, metric, period, trigger, epsilon)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (run_id, tenant, metric, period, trigger, epsilon),
    )


class ItemRow(NamedTuple):
    """One item's verdict in a run: a row of ``reconciliation_items`` (and ``reconciliation_latest``)."""

    run_id: str
    tenant_id: str
    metric: str
    customer_ref: str
    period: str  # YYYY-MM
    period_start: datetime  # the customer's cycle of that name
    period_end: datetime
    local: int
    stripe: int
    diff_abs: int
    diff_pct: float
    status: str
    action: str
    in_flight: int
    causes: list[dict[str, Any]]
    hours: list[dict[str, Any]]  # as the API shows them (buckets as RFC 3339)
    checked_at: datetime


ITEM_COLUMNS = ItemRow._fields

UPSERT_LATEST = f"""
INSERT INTO reconciliation_latest SELECT * FROM reconciliation_items WHERE run_id = %s
ON CONFLICT (tenant_id, metric, customer_ref, period) DO UPDATE SET
{", ".join(f"{c} = EXCLUDED.{c}" for c in ITEM_COLUMNS if c not in ("tenant_id", "metric", "customer_ref"))}
"""


class ProofRow(NamedTuple):
    """What a run's Stripe read established for an item: a row of ``reconciliation_proofs``."""

    tenant_id: str
    metric: str
    customer_ref: str
    period: str
    read_at: datetime
    digest: str | None  # None: the read did not prove settled parity


UPSERT_PROOFS = """
INSERT INTO reconciliation_proofs AS p (tenant_id, metric, customer_ref, period, read_at, digest)
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::text[])
ON CONFLICT (tenant_id, metric, customer_ref, period) DO UPDATE
SET read_at = EXCLUDED.read_at, digest = EXCLUDED.digest
"""


async def proofs(
    conn: psycopg.AsyncConnection, tenant: str, period: str, metric: str | None
) -> dict[tuple[str, str], tuple[datetime, str | None]]:
    """(metric, customer) -> (read at, digest) of the tenant's items of a period."""
    cur = await conn.execute(
        "SELECT metric, customer_ref, read_at, digest FROM reconciliation_proofs"
        " WHERE tenant_id = %s AND period = %s AND (%s::text IS NULL OR metric = %s)",
        (tenant, period, metric, metric),
    )
    return {(m, c): (at, d) for m, c, at, d in await cur.fetchall()}


async def finish_run(
    conn: psycopg.AsyncConnection,
    run_id: str,
    items: list[ItemRow],
    counts: dict[str, int],
    proven: list[ProofRow] | None = None,
) -> None:
    """Store every item, make them the latest verdicts, record what each Stripe read proved, and close
    the run: one transaction."""
    async with conn.transaction():
        if proven:
            await conn.execute(UPSERT_PROOFS, [list(column) for column in zip(*proven, strict=True)])
        async with conn.cursor().copy(
            f"COPY reconciliation_items ({', '.join(ITEM_COLUMNS)}) FROM STDIN"
        ) as copy:
            for row in items:
                await copy.write_row(
                    [orjson.dumps(v).decode() if isinstance(v, list | dict) else v for v in row]
                )
        await conn.execute(UPSERT_LATEST, (run_id,))
        await conn.execute(
            "UPDATE reconciliation_runs SET status = 'finished', finished_at = now(), items = %s,"
            " parity = %s, within_epsilon = %s, drift = %s, adjusted = %s, stripe_calls = %s"
            " WHERE run_id = %s",
            (
                len(items),
                counts.get("parity", 0),
                counts.get("within_epsilon", 0),
                counts.get("drift", 0),
                counts.get("adjusted", 0),
                counts.get("stripe_calls", 0),
                run_id,
            ),
        )
        # history is kept for a little over one billing period
        await conn.execute("DELETE FROM reconciliation_runs WHERE started_at < now() - interval '40 days'")
        if proven:
            await conn.execute(
                "DELETE FROM reconciliation_proofs"
                " WHERE tenant_id = %s AND read_at < %s - interval '40 days'",
                (proven[0].tenant_id, proven[0].read_at),
            )


async def fail_run(conn: psycopg.AsyncConnection, run_id: str, error: str) -> None:
    await conn.execute(
        "UPDATE reconciliation_runs SET status = 'failed', finished_at = now(), error = %s WHERE run_id = %s",
        (error[:1000], run_id),
    )


async def latest(
    conn: psycopg.AsyncConnection,
    tenant: str,
    metric: str,
    period: str,
    customer: str | None,
    limit: int | None = None,
    after: str | None = None,
) -> list[dict[str, Any]]:
    """The newest verdicts of a metric's period in customerRef order: up to ``limit`` after ``after``
    (a range of the primary key), or all of them."""
    query = "SELECT * FROM reconciliation_latest WHERE tenant_id = %s AND metric = %s AND period = %s"
    params: list[Any] = [tenant, metric, period]
    if customer is not None:
        query += " AND customer_ref = %s"
        params.append(customer)
    if after is not None:
        query += " AND customer_ref > %s"
        params.append(after)
    query += " ORDER BY customer_ref"
    if limit is not None:
        query += " LIMIT %s"
        params.append(limit)
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(query, params)
    return await cur.fetchall()


async def latest_overall(
    conn: psycopg.AsyncConnection, tenant: str, metric: str, period: str, customer: str | None
) -> dict[str, Any]:
    """What every newest verdict of a metric's period adds up to, whatever page is shown: the sums of
    local, Stripe and absolute differences, the statuses present and the newest check."""
    query = (
        "SELECT coalesce(sum(local), 0) AS local, coalesce(sum(stripe), 0) AS stripe,"
        " coalesce(sum(diff_abs), 0) AS diff_abs, coalesce(array_agg(DISTINCT status), '{}') AS statuses,"
        " max(checked_at) AS checked_at, count(*) AS items"
        " FROM reconciliation_latest WHERE tenant_id = %s AND metric = %s AND period = %s"
    )
    params: list[Any] = [tenant, metric, period]
    if customer is not None:
        query += " AND customer_ref = %s"
        params.append(customer)
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(query, params)
    row = await cur.fetchone()
    assert row is not None
    return row


async def latest_version(conn: psycopg.AsyncConnection) -> tuple[Any, ...]:
    """Changes whenever a run finishes: (runs finished, the newest finish)."""
    cur = await conn.execute(
        "SELECT count(*), max(finished_at) FROM reconciliation_runs WHERE status = 'finished'"
    )
    row = await cur.fetchone()
    return tuple(row) if row else ()


GAUGE_ORDER = {"diff_pct": "diff_pct DESC", "diff_abs": "abs(diff_abs) DESC"}


def worst_query(order: str) -> str:
    """The items not at parity, worst first by ``order`` (``diff_pct`` or ``diff_abs``), ties in
    key order so that a cut falls in the same place every time."""
    return (
        "SELECT tenant_id, metric, customer_ref, period, diff_pct, diff_abs FROM reconciliation_latest"
        f" WHERE status <> 'parity' ORDER BY {GAUGE_ORDER[order]}, tenant_id, metric, customer_ref, period"
        " LIMIT %s"
    )


async def worst_not_at_parity(
    conn: psycopg.AsyncConnection, order: str, limit: int
) -> list[tuple[str, str, str, str, float, float]]:
    """Gauge values of at most ``limit`` items whose latest verdict is not parity, the worst first:
    (tenant, metric, customer, period, diff_pct, diff_abs)."""
    cur = await conn.execute(worst_query(order), (limit,))
    return [(t, m, c, p, float(pct), float(abs_)) for t, m, c, p, pct, abs_ in await cur.fetchall()]


async def not_at_parity_counts(conn: psycopg.AsyncConnection) -> dict[str, int]:
    """Items whose latest verdict is not parity, by status."""
    cur = await conn.execute(
        "SELECT status, count(*) FROM reconciliation_latest WHERE status <> 'parity' GROUP BY status"
    )
    return {status: int(n) for status, n in await cur.fetchall()}


# --- corrections sent to Stripe ------------------------------------------------------------------------


async def record_correction(
    conn: psycopg.AsyncConnection,
    request: Request,
    key: tuple[str, str, str],
    bucket: datetime,
    run_id: str,
    now: datetime,
    stripe_seen: int | None = None,
) -> None:
    """An aligning meter event, recorded with its exact request before it is sent, and the value
    Stripe's summary showed for the hour when it was decided."""
    await conn.execute(
        "INSERT INTO adjustments (adjustment_id, tenant_id, metric, customer_ref, bucket, ts, delta_micros,"
        " reason, target, run_id, created_at, request, stripe_seen)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, 'reconciliation', 'stripe', %s, %s, %s, %s)"
        " ON CONFLICT (adjustment_id) DO NOTHING",
        (
            request.identifier, *key, bucket, datetime.fromtimestamp(request.timestamp, tz=UTC),
            request.value * MICROS, run_id, now, orjson.dumps(request.wire()).decode(), stripe_seen,
        ),
    )  # fmt: skip


async def finish_correction(
    conn: psycopg.AsyncConnection,
    adjustment_id: str,
    status: Literal["applied", "failed", "pending", "unknown"],
    error: str | None,
    now: datetime,
    new_key: bool = False,
) -> None:
    """What Stripe's answer means for a pending correction: ``applied`` (delivered), ``failed`` (refused:
    it did not land), still ``pending`` (no clear answer: it may have landed; sent again under its
    identifier, with the next idempotency key when ``new_key``: after a 5xx) or ``unknown`` (no answer
    within Stripe's identifier window: never sent again). ``now``: the application's clock, which the
    settle time is measured on. A refused correction gives back what it stood in for (drop_covers)."""
    async with conn.transaction():
        cur = conn.cursor()
        if status == "failed":
            await lock_hour_of_correction(cur, adjustment_id)
        await cur.execute(
            "UPDATE adjustments SET status = %(status)s, error = %(error)s,"
            " applied_at = CASE WHEN %(status)s::text = 'applied' THEN %(now)s::timestamptz END,"
            " send_attempt = send_attempt + %(bump)s"
            " WHERE adjustment_id = %(id)s AND status = 'pending'",
            {"status": status, "error": error, "now": now, "bump": int(new_key), "id": adjustment_id},
        )
        if status == "failed" and cur.rowcount:
            await give_back(cur, adjustment_id, now)


@dataclass(frozen=True)
class DroppedCorrection:
    """A correction Stripe accepted and then dropped (an error report names it)."""

    key: tuple[str, str, str, datetime]
    value: int
    was: str  # its status before: applied, pending or unknown
    given_back: int  # units of dropped requests it stood in for that its hour no longer holds


async def drop_correction(
    conn: psycopg.AsyncConnection, identifier: str, reason: str, now: datetime
) -> DroppedCorrection | None:
    """Stripe reported (asynchronously) that the reconciler's correction never counted: it is recorded
    as dropped, not applied, so it is neither sent again nor counted as in Stripe (the 24 h check's
    ``delivered_corrections`` and ``uncertain_corrections``), and the next run judges its hour afresh.
    What it stood in for is given back (drop_covers). None when no correction has that identifier, or
    it was refused or reported before."""
    async with conn.transaction():
        cur = conn.cursor(row_factory=dict_row)
        await lock_hour_of_correction(cur, identifier)
        await cur.execute(
            "SELECT tenant_id, metric, customer_ref, bucket, delta_micros, status FROM adjustments"
            " WHERE adjustment_id = %s AND target = 'stripe' FOR UPDATE",
            (identifier,),
        )
        found = await cur.fetchone()
        if found is None or found["status"] in ("failed", "dropped"):
            return None
        await cur.execute(
            "UPDATE adjustments SET status = 'dropped', error = %s WHERE adjustment_id = %s",
            (reason[:1000], identifier),
        )
        given_back = await give_back(cur, identifier, now)
    key = (found["tenant_id"], found["metric"], found["customer_ref"], found["bucket"])
    return DroppedCorrection(key, floor_units(int(found["delta_micros"])), found["status"], given_back)


async def pending_corrections(conn: psycopg.AsyncConnection, tenant: str) -> list[dict[str, Any]]:
    """Corrections recorded but not answered clearly (a crash mid-call, a 5xx, a timeout): resent with
    the same identifier while Stripe keeps it."""
    return await _rows(
        conn,
        "SELECT * FROM adjustments WHERE target = 'stripe' AND status = 'pending' AND tenant_id = %(tenant)s",
        {"tenant": tenant},
    )


# A correction's whole units, less what it stands in for (a dropped request the hour's pushed units
# still count: drop_covers), so that nothing is counted twice.
NET_CORRECTIONS = """
SELECT floor(a.delta_micros / 1000000)::bigint
       - sign(a.delta_micros) * coalesce((SELECT sum(c.units) FROM stripe_drop_covers c
                                          WHERE c.adjustment_id = a.adjustment_id), 0) AS units
FROM adjustments a
WHERE a.target = 'stripe' AND a.status = ANY(%s)
  AND a.tenant_id = %s AND a.metric = %s AND a.customer_ref = %s AND a.bucket = %s
ORDER BY a.created_at
"""


async def delivered_corrections(conn: psycopg.AsyncConnection, key: tuple[str, str, str, datetime]) -> int:
    """Whole units the reconciler's delivered corrections added to one hour in Stripe, beyond what the
    writer's pushed units count (less what they stand in for)."""
    cur = await conn.execute(NET_CORRECTIONS, (["applied"], *key))
    return sum(int(row[0]) for row in await cur.fetchall())


async def uncertain_corrections(
    conn: psycopg.AsyncConnection, key: tuple[str, str, str, datetime]
) -> list[int]:
    """Whole units of each of the reconciler's corrections to one hour that may or may not be in Stripe:
    ``pending`` (not answered clearly yet) or ``unknown`` (never answered within 24 h), less what they
    stand in for. The writer's 24 h check counts Stripe's hour as delivered + any subset of these.
    Dropped and refused ones are in neither list: they did not land."""
    cur = await conn.execute(NET_CORRECTIONS, (["pending", "unknown"], *key))
    return [int(row[0]) for row in await cur.fetchall()]
