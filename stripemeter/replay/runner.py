"""One replay: dry-run or apply over a window of one tenant's metrics (and optionally one customer).

The ledger is the truth. Every event the stream counted is already in its counter exactly once (the
fault tests prove it); what a window can still owe are its too-late events. A replay finds them (one
per idempotency key; none whose key was counted already), groups them per counter and:

- dry-run: reports before / after / delta per counter and in total, and changes nothing anywhere;
- apply: sends one correction per counter through the keyed topic (so the meter applies it in order
  with live events, and publishes the new total to usage.deltas, from where the writer pushes it),
  then marks the events as counted by this replay. A second apply finds nothing left: delta 0. A
  retry after a crash between the two steps sends the same corrections again, with the same ids, and
  the meter applies each once.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from aiokafka import AIOKafkaProducer

from stripemeter import metrics
from stripemeter.db import replay as db
from stripemeter.db.mappings import list_rows
from stripemeter.replay.plan import Plan, make_plan
from stripemeter.replay.window import Window
from stripemeter.streams.control import send_corrections
from stripemeter.streams.deltas import micros_to_number

log = logging.getLogger(__name__)

Mode = Literal["dry-run", "apply"]
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ReplayRequest:
    tenant_id: str
    metrics: list[str]
    customer_ref: str | None
    window: Window
    mode: Mode


class UnknownMetric(ValueError):
    pass


class Replayer:
    def __init__(self, producer: AIOKafkaProducer, keyed_topic: str):
        self.producer = producer
        self.keyed_topic = keyed_topic

    async def run(
        self, conn: psycopg.AsyncConnection, request: ReplayRequest, progress: Progress | None = None
    ) -> dict[str, Any]:
        lock = f"stripemeter-replay:{request.tenant_id}"
        started = time.perf_counter()
        await conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (lock,))
        try:
            report = await self._run_locked(conn, request, progress)
        except Exception:
            metrics.REPLAYS.labels(request.mode, "failed").inc()
            raise
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (lock,))
        seconds = time.perf_counter() - started
        metrics.REPLAYS.labels(request.mode, "ok").inc()
        metrics.REPLAY_SECONDS.labels(request.mode).observe(seconds)
        log.info(
            "replay %s %s: tenant %s metrics %s%s window %s .. %s: %d events scanned, %d too-late events"
            " into %d counters, delta %s, %.3f s",
            report["replayId"], request.mode, request.tenant_id, ",".join(request.metrics),
            f" customer {request.customer_ref}" if request.customer_ref else "", report["window"]["since"],
            report["window"]["until"], report["eventsScanned"], report["eventsReplayed"],
            len(report["counters"]), report["totals"]["delta"], seconds,
        )  # fmt: skip
        return {**report, "durationSeconds": round(seconds, 3)}

    async def _run_locked(
        self, conn: psycopg.AsyncConnection, request: ReplayRequest, progress: Progress | None
    ) -> dict[str, Any]:
        aggregations = {
            r["metric"]: r["aggregation"] for r in await list_rows(conn, "metric_mappings", request.tenant_id)
        }
        await check_metrics(conn, request.tenant_id, request.metrics, aggregations)
        w = request.window
        scope = db.Scope(request.tenant_id, request.metrics, request.customer_ref, w.since, w.until)
        scanned = await db.events_scanned(conn, scope)
        rows = await db.pending_late(conn, scope)
        keys = sorted(
            {
                (r["metric"], r["customer_ref"], r["ts"].replace(minute=0, second=0, microsecond=0))
                for r in rows
            }
        )
        before = await db.counter_totals(conn, request.tenant_id, keys)
        plan = make_plan(request.tenant_id, rows, aggregations, before)
        replay_id = "rpl_" + uuid.uuid4().hex[:20]
        report = build_report(replay_id, request, scanned, plan, applied=False)
        if request.mode == "dry-run":
            await db.store(conn, replay_id, scope, request.mode, "planned", report)
            return report
        await db.store(conn, replay_id, scope, request.mode, "applying", report)
        try:
            await send_corrections(self.producer, self.keyed_topic, plan.corrections, progress)
            report = {**report, "applied": True}
            async with conn.transaction():
                await db.mark_replayed(conn, replay_id, request.tenant_id, plan.keys)
                await db.store(conn, replay_id, scope, request.mode, "applied", report)
        except Exception as exc:
            await db.fail(conn, replay_id, f"{type(exc).__name__}: {exc}")
            raise
        return report


async def check_metrics(
    conn: psycopg.AsyncConnection, tenant: str, wanted: list[str], mapped: dict[str, str]
) -> None:
    """A metric is known when it has a mapping or the tenant has counted it."""
    for metric in wanted:
        if metric in mapped:
            continue
        cur = await conn.execute(
            "SELECT EXISTS (SELECT 1 FROM counters WHERE tenant_id = %s AND metric = %s)"
            " OR EXISTS (SELECT 1 FROM events WHERE tenant_id = %s AND metric = %s)",
            (tenant, metric, tenant, metric),
        )
        row = await cur.fetchone()
        if not (row and row[0]):
            raise UnknownMetric(f"unknown metric {metric!r} for tenant {tenant!r}: no mapping and no usage")


def build_report(
    replay_id: str, request: ReplayRequest, scanned: int, plan: Plan, applied: bool
) -> dict[str, Any]:
    before = sum(c.before_micros for c in plan.changes)
    after = sum(c.after_micros for c in plan.changes)
    return {
        "replayId": replay_id,
        "mode": request.mode,
        "tenantId": request.tenant_id,
        "metrics": request.metrics,
        "customerRef": request.customer_ref,
        "window": request.window.wire(),
        "eventsScanned": scanned,
        "eventsReplayed": sum(c.events for c in plan.changes),
        "counters": [
            {
                "metric": c.metric,
                "customerRef": c.customer_ref,
                "bucket": c.bucket.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "before": micros_to_number(c.before_micros),
                "after": micros_to_number(c.after_micros),
                "delta": micros_to_number(c.delta_micros),
                "events": c.events,
            }
            for c in plan.changes
        ],
        "totals": {
            "before": micros_to_number(before),
            "after": micros_to_number(after),
            "delta": micros_to_number(after - before),
        },
        "applied": applied,
    }
