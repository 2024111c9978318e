"""Replay in PostgreSQL: the too-late events a window still owes, the counters they change, the
corrections an apply recorded (with the keys each counts) before sending them, and the stored replay
reports."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row

from stripemeter.adapters.kafka.corrections import Sent
from stripemeter.adapters.postgres.counters import Applied, targets_json
from stripemeter.adapters.postgres.ledger_partitions import time_window
from stripemeter.core.replay_plan import CounterId, Recorded
from stripemeter.schemas.corrections import Correction

# Too-late events of the window not counted yet: one per idempotency key and customer (the first
# received; a key is one event per tenant and customer, so a key two customers reused is owed once for
# each), and none whose key the stream counted for that customer or a replay's correction claimed for
# that customer (a duplicate is never counted; a claimed key is counted by its correction, sent or
# still to be re-sent). The reconciler's LATE (adapters/postgres/reconciliation.py) picks the same events.
PENDING_LATE = f"""
SELECT DISTINCT ON (e.idempotency_key, e.customer_ref)
       e.metric, e.customer_ref, e.ts, e.quantity_micros, e.idempotency_key,
       e.source_topic, e.source_partition, e.source_offset, e.source_index,
       floor(extract(epoch FROM e.ts) * 1000)::bigint AS ts_ms,
       floor(extract(epoch FROM e.ts) / 3600)::bigint * 3600000 AS bucket_ms
FROM events e
WHERE e.tenant_id = %(tenant)s AND e.outcome = 'late' AND e.metric = ANY(%(metrics)s)
  AND e.ts >= %(since)s AND e.ts < %(until)s AND {time_window("%(since)s", "%(until)s")}
  AND (%(customer)s::text IS NULL OR e.customer_ref = %(customer)s)
  AND NOT EXISTS (
      SELECT 1 FROM replayed_keys r
      WHERE r.tenant_id = e.tenant_id AND r.idempotency_key = e.idempotency_key
        AND r.customer_ref = e.customer_ref)
  AND NOT EXISTS (
      SELECT 1 FROM events d
      WHERE d.tenant_id = e.tenant_id AND d.idempotency_key = e.idempotency_key
        AND d.customer_ref = e.customer_ref AND d.outcome = 'counted')
ORDER BY e.idempotency_key, e.customer_ref,
         e.source_topic, e.source_partition, e.source_offset, e.source_index
"""

# The same events grouped by counter (metric, customer, hour), each counter's in PENDING_LATE's order, so
# a replay folds them one counter at a time as they stream (core/replay_plan.py PendingFold). The hour
# is the meter's: ``bucket_ms``, the UTC hour in epoch milliseconds, whatever the session's time zone.
PENDING_LATE_BY_COUNTER = f"""
SELECT * FROM ({PENDING_LATE}) pending
ORDER BY metric, customer_ref, bucket_ms, idempotency_key,
         source_topic, source_partition, source_offset, source_index
"""
PAGE_ROWS = 2000  # fetched from the server-side cursor at a time

# Corrections recorded by an apply whose send was not acknowledged (a crash or an error in between):
# the next apply of a window that holds them sends them again, with the same ids.
UNCONFIRMED = """
SELECT correction_id, metric, customer_ref, bucket, kind, micros, ts_ms, events, last_micros
FROM replay_corrections
WHERE tenant_id = %(tenant)s AND status = 'recorded' AND metric = ANY(%(metrics)s)
  AND bucket >= %(since)s AND bucket < %(until)s
  AND (%(customer)s::text IS NULL OR customer_ref = %(customer)s)
ORDER BY metric, customer_ref, bucket, correction_id
"""

SCANNED = f"""
SELECT count(*) FROM events
WHERE tenant_id = %(tenant)s AND metric = ANY(%(metrics)s) AND ts >= %(since)s AND ts < %(until)s
  AND {time_window("%(since)s", "%(until)s")}
  AND (%(customer)s::text IS NULL OR customer_ref = %(customer)s)
"""

# The counters travel as one JSON array of [metric, customer, bucket] (psycopg would dump three lists of
# thousands of values, datetimes among them, in Python).
COUNTERS = """
SELECT c.metric, c.customer_ref, c.bucket, c.total_micros
FROM jsonb_array_elements(%s::jsonb) AS k (counter)
JOIN counters c
  ON c.tenant_id = %s AND c.metric = k.counter->>0 AND c.customer_ref = k.counter->>1
 AND c.bucket = (k.counter->>2)::timestamptz
"""


@dataclass(frozen=True)
class Scope:
    """What a replay covers: one tenant's metrics (and maybe one customer) over [since, until)."""

    tenant: str
    metrics: list[str]
    customer: str | None
    since: datetime
    until: datetime


async def pending_late(conn: psycopg.AsyncConnection, scope: Scope) -> list[dict[str, Any]]:
    """The whole window's pending events at once (small windows, and the tests' oracle for the stream)."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(PENDING_LATE, asdict(scope))
    return await cur.fetchall()


async def stream_pending_late(
    conn: psycopg.AsyncConnection, scope: Scope, sink: Callable[[dict[str, Any]], None], page: int = PAGE_ROWS
) -> None:
    """Hand ``sink`` every row of PENDING_LATE_BY_COUNTER, ``page`` rows at a time from a server-side
    cursor (in a transaction of its own): a 35-day window is never in memory at once."""
    async with (
        conn.transaction(),
        conn.cursor(name="stripemeter_pending_late", row_factory=dict_row) as cur,
    ):
        cur.itersize = page
        await cur.execute(PENDING_LATE_BY_COUNTER, asdict(scope))
        async for row in cur:
            sink(row)


async def events_scanned(conn: psycopg.AsyncConnection, scope: Scope) -> int:
    cur = await conn.execute(SCANNED, asdict(scope))
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def counter_totals(
    conn: psycopg.AsyncConnection, tenant: str, keys: list[tuple[str, str, datetime]]
) -> dict[tuple[str, str, datetime], int]:
    if not keys:
        return {}
    cur = await conn.execute(COUNTERS, (orjson.dumps(keys).decode(), tenant))
    return {(m, c, b): int(t) for m, c, b, t in await cur.fetchall()}


async def billing_anchors(
    conn: psycopg.AsyncConnection, tenant: str, customers: set[str]
) -> dict[str, datetime]:
    """The billing anchors of these customers (those that have one): only the replay's customers are
    read, not every mapping of a tenant with 100,000 customers."""
    if not customers:
        return {}
    cur = await conn.execute(
        "SELECT customer_ref, billing_anchor FROM customer_mappings WHERE tenant_id = %s"
        " AND customer_ref = ANY(%s) AND billing_anchor IS NOT NULL",
        (tenant, sorted(customers)),
    )
    return {customer: anchor for customer, anchor in await cur.fetchall()}


async def unconfirmed(conn: psycopg.AsyncConnection, scope: Scope) -> list[tuple[CounterId, Recorded]]:
    cur = await conn.execute(UNCONFIRMED, asdict(scope))
    found = []
    for ident, metric, customer, bucket, kind, micros, ts_ms, events, last_micros in await cur.fetchall():
        bucket_ms = int(bucket.timestamp() * 1000)
        correction = Correction(
            ident, scope.tenant, metric, customer, bucket_ms, kind, int(micros), ts_ms,
            events if kind == "events" else 0, int(last_micros or 0),
        )  # fmt: skip
        found.append(((metric, customer, bucket), Recorded(correction, events)))
    return found


async def record_corrections(
    conn: psycopg.AsyncConnection, replay_id: str, tenant: str, new: list[tuple[Correction, list[str]]]
) -> None:
    """Before anything is sent: each new correction, and its events' keys claimed for it (call in a
    transaction). COPY: a replay of 10,000 events must take well under a second."""
    if not new:
        return
    columns = (
        "correction_id, replay_id, tenant_id, metric, customer_ref, bucket, kind, micros, ts_ms, events,"
        " last_micros, status"
    )
    async with conn.cursor() as cur:
        async with cur.copy(f"COPY replay_corrections ({columns}) FROM STDIN") as copy:
            for c, keys in new:
                bucket = datetime.fromtimestamp(c.bucket_ms / 1000, tz=UTC)
                await copy.write_row(
                    (c.id, replay_id, tenant, c.metric, c.customer_ref, bucket, c.kind, c.micros, c.ts_ms,
                     len(keys), c.last_micros, "recorded")
                )  # fmt: skip
        # a correction counts one counter's events, so the keys it claims are its customer's
        columns = "tenant_id, idempotency_key, customer_ref, replay_id, correction_id"
        async with cur.copy(f"COPY replayed_keys ({columns}) FROM STDIN") as copy:
            for c, keys in new:
                for key in keys:
                    await copy.write_row((tenant, key, c.customer_ref, replay_id, c.id))


async def mark_sent(conn: psycopg.AsyncConnection, replay_id: str, sent: list[Sent]) -> None:
    """The broker acknowledged these corrections: where each landed (no apply sends them again)."""
    if not sent:
        return
    await conn.execute(
        "UPDATE replay_corrections c SET status = 'sent', sent_by = %s, keyed_partition = s.part,"
        " keyed_offset = s.off, sent_at = now()"
        " FROM unnest(%s::text[], %s::int[], %s::bigint[]) AS s(id, part, off)"
        " WHERE c.correction_id = s.id AND c.status = 'recorded'",
        (
            replay_id,
            [s.correction.id for s in sent],
            [s.partition for s in sent],
            [s.offset for s in sent],
        ),
    )


async def store(
    conn: psycopg.AsyncConnection,
    replay_id: str,
    scope: Scope,
    mode: str,
    status: str,
    report: dict[str, Any],
    targets: list[Applied] | None = None,
) -> None:
    """The report; for an apply also where its corrections went (``targets``: see read your writes)."""
    stored_targets = None if targets is None else targets_json(targets)
    await conn.execute(
        "INSERT INTO replays (replay_id, tenant_id, metrics, customer_ref, since, until, mode, status,"
        " events_scanned, report, targets, finished_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
        " CASE WHEN %s IN ('applied', 'planned') THEN now() END)"
        " ON CONFLICT (replay_id) DO UPDATE SET status = EXCLUDED.status, report = EXCLUDED.report,"
        " targets = coalesce(EXCLUDED.targets, replays.targets), finished_at = EXCLUDED.finished_at",
        (
            replay_id, scope.tenant, scope.metrics, scope.customer, scope.since, scope.until,
            mode, status, report["eventsScanned"], orjson.dumps(report).decode(), stored_targets, status,
        ),
    )  # fmt: skip


async def load_targets(conn: psycopg.AsyncConnection, replay_id: str) -> list[Applied]:
    cur = await conn.execute("SELECT targets FROM replays WHERE replay_id = %s", (replay_id,))
    row = await cur.fetchone()
    if row is None or row[0] is None:
        return []
    return [
        Applied(tenant, metric, customer, datetime.fromisoformat(bucket), partition, offset)
        for tenant, metric, customer, bucket, partition, offset in row[0]
    ]


async def mark_applied(conn: psycopg.AsyncConnection, replay_id: str, targets: list[Applied]) -> None:
    """The apply's corrections are all sent, and where they went (``targets``: see read your writes).
    The stored report (thousands of counters) is not rewritten: ``load`` reads ``applied`` from the
    status and ``visible`` from ``visible_at``."""
    await conn.execute(
        "UPDATE replays SET status = 'applied', targets = %s::jsonb, finished_at = now()"
        " WHERE replay_id = %s",
        (targets_json(targets), replay_id),
    )


async def mark_visible(conn: psycopg.AsyncConnection, replay_id: str, at: datetime | None) -> None:
    """The counters show every correction of the apply (``at``: when; None: noticed later); ``load``
    reads the report as visible from now on."""
    await conn.execute(
        "UPDATE replays SET visible_at = coalesce(%s, now()) WHERE replay_id = %s", (at, replay_id)
    )


async def fail(conn: psycopg.AsyncConnection, replay_id: str, error: str) -> None:
    await conn.execute(
        "UPDATE replays SET status = 'failed', error = %s, finished_at = now() WHERE replay_id = %s",
        (error[:1000], replay_id),
    )


async def load(conn: psycopg.AsyncConnection, replay_id: str) -> dict[str, Any] | None:
    cur = await conn.execute(
        "SELECT report, status, tenant_id, error, visible_at IS NOT NULL FROM replays WHERE replay_id = %s",
        (replay_id,),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    report, status, tenant, error, visible = row
    if status == "applied":  # see mark_applied and mark_visible
        report["applied"], report["visible"] = True, visible
        if visible:
            report.pop("message", None)
    return {**report, "status": status, "tenantId": tenant, **({"error": error} if error else {})}
