"""Reconciliation in PostgreSQL: what it reads (counters, writer state, late events, corrections)
and what it stores (runs, items, the latest verdict per item, corrections sent to Stripe)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import orjson
import psycopg
from psycopg.rows import dict_row

from stripemeter.core.push_plan import Request
from stripemeter.domain.units import MICROS, floor_units

# Per hour: the newest local total (counters snapshot or the writer's copy, whichever has the higher
# seq), what the writer delivered, and when the hour last changed (a local change, or a finished push).
HOURS = """
SELECT coalesce(c.metric, p.metric) AS metric,
       coalesce(c.customer_ref, p.customer_ref) AS customer_ref,
       coalesce(c.bucket, p.bucket) AS bucket,
       CASE WHEN p.latest_seq IS NOT NULL AND (c.seq IS NULL OR p.latest_seq > c.seq)
            THEN p.latest_micros ELSE c.total_micros END AS local_micros,
       p.pushed_units, p.status, p.reason,
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

# Too-late events waiting for a replay: the events a replay of the range would count (db/replay.py's
# PENDING_LATE: one per idempotency key and customer, the first received, none the stream counted),
# and also those claimed by a correction an apply recorded but did not see sent (still waiting).
LATE = """
SELECT metric, customer_ref, date_trunc('hour', ts) AS bucket, count(*) AS n, sum(quantity_micros) AS micros
FROM (
    SELECT DISTINCT ON (e.idempotency_key, e.customer_ref) e.metric, e.customer_ref, e.ts, e.quantity_micros
    FROM events e
    WHERE e.tenant_id = %(tenant)s AND e.outcome = 'late' AND e.ts >= %(start)s AND e.ts < %(end)s
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

# Per hour, the reconciler's corrections that may be in Stripe (refused ones did not land): the newest
# one's time, and whether one is still unanswered ('pending': it may have landed; the hour is in flight
# until Stripe answers it).
CORRECTIONS = """
SELECT metric, customer_ref, bucket, extract(epoch FROM max(coalesce(applied_at, created_at))) AS at,
       bool_or(status = 'pending') AS pending
FROM adjustments
WHERE target = 'stripe' AND tenant_id = %(tenant)s AND bucket >= %(start)s AND bucket < %(end)s
  AND (%(metric)s::text IS NULL OR metric = %(metric)s) AND status <> 'failed'
GROUP BY 1, 2, 3
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


async def tenants(conn: psycopg.AsyncConnection, since: datetime) -> list[str]:
    """Tenants with a mapping or a counter since ``since``: the ones a scheduled run checks."""
    cur = await conn.execute(
        "SELECT tenant_id FROM metric_mappings"
        " UNION SELECT DISTINCT tenant_id FROM counters WHERE bucket >= %s ORDER BY 1",
        (since,),
    )
    return [r[0] for r in await cur.fetchall()]


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


ITEM_COLUMNS = (
    "run_id", "tenant_id", "metric", "customer_ref", "period", "period_start", "period_end", "local",
    "stripe", "diff_abs", "diff_pct", "status", "action", "in_flight", "causes", "hours", "checked_at",
)  # fmt: skip

UPSERT_LATEST = f"""
INSERT INTO reconciliation_latest SELECT * FROM reconciliation_items WHERE run_id = %s
ON CONFLICT (tenant_id, metric, customer_ref, period) DO UPDATE SET
{", ".join(f"{c} = EXCLUDED.{c}" for c in ITEM_COLUMNS if c not in ("tenant_id", "metric", "customer_ref"))}
"""


async def finish_run(
    conn: psycopg.AsyncConnection, run_id: str, items: list[tuple[Any, ...]], counts: dict[str, int]
) -> None:
    """Store every item, make them the latest verdicts, and close the run: one transaction."""
    async with conn.transaction():
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


async def fail_run(conn: psycopg.AsyncConnection, run_id: str, error: str) -> None:
    await conn.execute(
        "UPDATE reconciliation_runs SET status = 'failed', finished_at = now(), error = %s WHERE run_id = %s",
        (error[:1000], run_id),
    )


async def latest(
    conn: psycopg.AsyncConnection, tenant: str, metric: str, period: str, customer: str | None
) -> list[dict[str, Any]]:
    query = "SELECT * FROM reconciliation_latest WHERE tenant_id = %s AND metric = %s AND period = %s"
    params: list[Any] = [tenant, metric, period]
    if customer is not None:
        query += " AND customer_ref = %s"
        params.append(customer)
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(query + " ORDER BY customer_ref", params)
    return await cur.fetchall()


async def latest_version(conn: psycopg.AsyncConnection) -> tuple[Any, ...]:
    """Changes whenever a run finishes: (runs finished, the newest finish)."""
    cur = await conn.execute(
        "SELECT count(*), max(finished_at) FROM reconciliation_runs WHERE status = 'finished'"
    )
    row = await cur.fetchone()
    return tuple(row) if row else ()


async def latest_not_at_parity(
    conn: psycopg.AsyncConnection,
) -> list[tuple[str, str, str, str, float, float]]:
    """Gauge values of every item whose latest verdict is not parity:
    (tenant, metric, customer, period, diff_pct, diff_abs)."""
    cur = await conn.execute(
        "SELECT tenant_id, metric, customer_ref, period, diff_pct, diff_abs FROM reconciliation_latest"
        " WHERE status <> 'parity'"
    )
    return [(t, m, c, p, float(pct), float(abs_)) for t, m, c, p, pct, abs_ in await cur.fetchall()]


# --- corrections sent to Stripe ------------------------------------------------------------------------


async def record_correction(
    conn: psycopg.AsyncConnection,
    request: Request,
    key: tuple[str, str, str],
    bucket: datetime,
    run_id: str,
    now: datetime,
) -> None:
    """An aligning meter event, recorded with its exact request before it is sent."""
    await conn.execute(
        "INSERT INTO adjustments (adjustment_id, tenant_id, metric, customer_ref, bucket, ts, delta_micros,"
        " reason, target, run_id, created_at, request)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, 'reconciliation', 'stripe', %s, %s, %s)"
        " ON CONFLICT (adjustment_id) DO NOTHING",
        (
            request.identifier, *key, bucket, datetime.fromtimestamp(request.timestamp, tz=UTC),
            request.value * MICROS, run_id, now, orjson.dumps(request.wire()).decode(),
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
    settle time is measured on."""
    await conn.execute(
        "UPDATE adjustments SET status = %(status)s, error = %(error)s,"
        " applied_at = CASE WHEN %(status)s::text = 'applied' THEN %(now)s::timestamptz END,"
        " send_attempt = send_attempt + %(bump)s"
        " WHERE adjustment_id = %(id)s AND status = 'pending'",
        {"status": status, "error": error, "now": now, "bump": int(new_key), "id": adjustment_id},
    )


async def pending_corrections(conn: psycopg.AsyncConnection, tenant: str) -> list[dict[str, Any]]:
    """Corrections recorded but not answered clearly (a crash mid-call, a 5xx, a timeout): resent with
    the same identifier while Stripe keeps it."""
    return await _rows(
        conn,
        "SELECT * FROM adjustments WHERE target = 'stripe' AND status = 'pending' AND tenant_id = %(tenant)s",
        {"tenant": tenant},
    )


async def delivered_corrections(conn: psycopg.AsyncConnection, key: tuple[str, str, str, datetime]) -> int:
    """Whole units the reconciler's delivered corrections added to one hour in Stripe."""
    cur = await conn.execute(
        "SELECT coalesce(sum(delta_micros), 0) FROM adjustments"
        " WHERE target = 'stripe' AND status = 'applied'"
        " AND tenant_id = %s AND metric = %s AND customer_ref = %s AND bucket = %s",
        key,
    )
    row = await cur.fetchone()
    return floor_units(int(row[0])) if row else 0


async def uncertain_corrections(
    conn: psycopg.AsyncConnection, key: tuple[str, str, str, datetime]
) -> list[int]:
    """Whole units of each of the reconciler's corrections to one hour that may or may not be in Stripe:
    ``pending`` (not answered clearly yet) or ``unknown`` (never answered within 24 h). The writer's
    24 h check counts Stripe's hour as delivered + any subset of these."""
    cur = await conn.execute(
        "SELECT delta_micros FROM adjustments WHERE target = 'stripe' AND status IN ('pending', 'unknown')"
        " AND tenant_id = %s AND metric = %s AND customer_ref = %s AND bucket = %s ORDER BY created_at",
        key,
    )
    return [floor_units(int(row[0])) for row in await cur.fetchall()]
