"""One replay: dry-run or apply over a window of one tenant's metrics (and optionally one customer).

The ledger is the truth. Every event the stream counted is already in its counter exactly once (the
fault tests prove it); what a window can still owe are its too-late events. A replay finds them (one
per idempotency key; none whose key was counted already or is claimed by a replay's correction),
groups them per counter and:

- dry-run: reports before / after / delta per counter and in total, and changes nothing anywhere;
- apply: in one transaction records one correction per counter with the keys of the events it counts
  (claiming them: no later plan covers them again), then sends the corrections through the keyed
  topic (so the meter applies them in order with live events, and publishes the new totals to
  usage.deltas, from where the writer pushes them), then marks them sent. A second apply finds
  nothing left: delta 0. An apply that fails or crashes after recording leaves corrections recorded
  but not marked sent: the next apply of a window holding them sends them again first, with the same
  ids and the same events, whatever arrived since (the meter applies each id once), and plans new
  corrections only for events no correction claims.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import psycopg
from aiokafka import AIOKafkaProducer

from stripemeter.adapters.kafka.corrections import Sent, send_corrections
from stripemeter.adapters.postgres import counted_metrics, locks
from stripemeter.adapters.postgres import replay as db
from stripemeter.adapters.postgres.counters import Applied, wait_applied
from stripemeter.adapters.postgres.mappings import list_rows
from stripemeter.core.replay_plan import PendingFold, Plan, plan_from
from stripemeter.core.replay_window import Window
from stripemeter.domain import metrics, periods
from stripemeter.domain.clock import SYSTEM, Clock
from stripemeter.domain.config import Settings
from stripemeter.domain.errors import Invalid
from stripemeter.domain.timefmt import iso_seconds
from stripemeter.domain.units import micros_to_number
from stripemeter.schemas.topics import TopicNames

log = logging.getLogger(__name__)

Mode = Literal["dry-run", "apply"]
DEFAULT_INVOICE_GRACE = timedelta(hours=72)
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ReplayRequest:
    tenant_id: str
    metrics: list[str]
    customer_ref: str | None
    window: Window
    mode: Mode


class UnknownMetric(Invalid, ValueError):
    """A metric the tenant has neither mapped nor counted: ``field`` is ``metrics`` (the request's
    list), ``code`` is ``unknown_metric``; the message is the detail alone."""

    code = "unknown_metric"
    field: str

    def __init__(self, metric: str, tenant: str) -> None:
        detail = f"unknown metric {metric!r} for tenant {tenant!r}: no mapping and no usage"
        super().__init__("metrics", detail, message=detail)
        self.metric = metric
        self.tenant = tenant


class Replayer:
    def __init__(
        self,
        producer: AIOKafkaProducer,
        keyed_topic: str,
        clock: Clock = SYSTEM,
        invoice_grace: timedelta = DEFAULT_INVOICE_GRACE,
        visible_timeout: float = 30.0,
    ):
        self.producer = producer
        self.keyed_topic = keyed_topic
        self.clock = clock
        self.invoice_grace = invoice_grace
        self.visible_timeout = visible_timeout

    async def run(
        self,
        conn: psycopg.AsyncConnection,
        request: ReplayRequest,
        progress: Progress | None = None,
        wait: bool = False,
    ) -> dict[str, Any]:
        """One replay; replays of one tenant never overlap: while one runs, another raises ``Busy``
        (or, with ``wait``, waits for it)."""
        lock = f"stripemeter-replay:{request.tenant_id}"
        busy = f"tenantId: a replay of tenant {request.tenant_id!r} is running; retry when it is done"
        started = time.perf_counter()
        async with locks.held(conn, lock, busy, wait=wait):
            try:
                report = await self._run_locked(conn, request, progress)
            except Exception:
                metrics.REPLAYS.labels(request.mode, "failed").inc()
                raise
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
        recorded = await db.unconfirmed(conn, scope)
        fold = PendingFold(request.tenant_id, keep_keys=request.mode == "apply")  # a dry-run claims none
        await db.stream_pending_late(conn, scope, fold.add)
        pending = fold.finish()
        keys = sorted(pending.keys() | {c for c, _r in recorded})
        before = await db.counter_totals(conn, request.tenant_id, keys)
        plan = plan_from(pending, aggregations, before, recorded)
        anchors = await db.billing_anchors(conn, request.tenant_id, {c.customer_ref for c in plan.changes})
        changes = [(anchors.get(c.customer_ref), c.bucket, c.delta_micros) for c in plan.changes]
        period_names, notes = periods.notes_for(changes, self.clock.utc(), self.invoice_grace)
        replay_id = "rpl_" + uuid.uuid4().hex[:20]
        report = build_report(replay_id, request, scanned, plan, period_names, notes, self.invoice_grace)
        if request.mode == "dry-run":
            await db.store(conn, replay_id, scope, request.mode, "planned", report)
            return report
        # the events each correction counts are fixed and stored before anything is sent
        async with conn.transaction():
            await db.store(conn, replay_id, scope, request.mode, "applying", report)
            await db.record_corrections(conn, replay_id, request.tenant_id, plan.new)
        try:
            sent = await send_corrections(self.producer, self.keyed_topic, plan.corrections, progress)
            targets = [shown_when_applied(s) for s in sent]
            report = {**report, "applied": True, "visible": not targets}
            async with conn.transaction():
                await db.mark_sent(conn, replay_id, sent)
                await db.mark_applied(conn, replay_id, targets)
        except Exception as exc:
            await db.fail(conn, replay_id, f"{type(exc).__name__}: {exc}")
            raise
        return await self._read_your_writes(conn, replay_id, report, targets)

    async def _read_your_writes(
        self, conn: psycopg.AsyncConnection, replay_id: str, report: dict[str, Any], targets: list[Applied]
    ) -> dict[str, Any]:
        """Return once the counters show every correction, or say that they do not yet."""
        if await wait_applied(conn, targets, self.visible_timeout):
            report = {**report, "visible": True}
            await db.mark_visible(conn, replay_id, self.clock.utc())
            return report
        log.warning(
            "replay %s: the counters do not show all %d corrections after %.0f s", replay_id, len(targets),
            self.visible_timeout,
        )  # fmt: skip
        return {**report, "message": not_visible_message(replay_id, self.visible_timeout)}


def build_replayer(settings: Settings, producer: AIOKafkaProducer) -> Replayer:
    keyed = TopicNames(settings.topic_prefix, settings.app_id).keyed
    grace = timedelta(seconds=settings.invoice_grace_seconds)
    return Replayer(producer, keyed, settings.clock, grace, settings.apply_wait_seconds)


async def check_metrics(
    conn: psycopg.AsyncConnection, tenant: str, wanted: list[str], mapped: dict[str, str]
) -> None:
    """A metric is known when it has a mapping or the tenant has counted it."""
    for metric in wanted:
        if metric in mapped:
            continue
        if not await counted_metrics.has_counted(conn, tenant, metric):
            raise UnknownMetric(metric, tenant)


def shown_when_applied(sent: Sent) -> Applied:
    c = sent.correction
    bucket = datetime.fromtimestamp(c.bucket_ms / 1000, tz=UTC)
    return Applied(c.tenant_id, c.metric, c.customer_ref, bucket, sent.partition, sent.offset)


def not_visible_message(replay_id: str, waited: float) -> str:
    return (
        f"the corrections are in Kafka but the counters did not show all of them within {waited:.0f} s"
        " (is a worker running, or behind?); they count once the meter applies them:"
        f" GET /v1/replay/{replay_id} says visible: true then"
    )


async def refresh_visibility(
    conn: psycopg.AsyncConnection, replay_id: str, report: dict[str, Any]
) -> dict[str, Any]:
    """A stored apply that the counters did not show yet: look again."""
    if not report.get("applied") or report.get("visible", True):
        return report
    targets = await db.load_targets(conn, replay_id)
    if await wait_applied(conn, targets, 0):
        report = {**report, "visible": True}
        report.pop("message", None)
        await db.mark_visible(conn, replay_id, None)
    return report


def build_report(
    replay_id: str,
    request: ReplayRequest,
    scanned: int,
    plan: Plan,
    period_names: list[str],
    notes: list[periods.PeriodNote],
    grace: timedelta,
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
                "bucket": iso_seconds(c.bucket),
                "before": micros_to_number(c.before_micros),
                "after": micros_to_number(c.after_micros),
                "delta": micros_to_number(c.delta_micros),
                "events": c.events,
                "period": period,
                **({"resent": c.resent} if c.resent else {}),
            }
            for c, period in zip(plan.changes, period_names, strict=True)
        ],
        "periods": [
            {
                **n.period.wire(),
                "state": n.state,
                "counters": n.counters,
                "delta": micros_to_number(n.delta_micros),
            }
            for n in notes
        ],
        "warnings": [w for n in notes if (w := n.warning(grace))],
        "totals": {
            "before": micros_to_number(before),
            "after": micros_to_number(after),
            "delta": micros_to_number(after - before),
        },
        "applied": False,
    }
