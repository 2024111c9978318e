"""One reconciliation cycle for a tenant (and optionally one metric) over one billing period.

1. Load the period's hours from PostgreSQL: local totals, what the writer delivered, late events,
   recent corrections; and the mappings. The settle time is the configured one or, if longer, a
   multiple of the longest lag of Stripe's summaries confirmed lately (``stripe_summary_lags``).
2. Ask Stripe for each customer's period total (one call). Equal totals are parity; otherwise list
   the customer's hours, load what Stripe took for the hours that differ (delivered requests and
   applied corrections, in order) and judge each (see ``core/reconcile_compare``); record the lags
   seen and the ones a read shows were lag.
3. Within epsilon (or when the operator asks to align everything): send the aligning meter events,
   each recorded as an audited adjustment before the call, so a crash or an unclear answer (5xx,
   timeout) resends the same identifier; such an hour stays in flight until Stripe answers.
4. Store the run and its items and publish every item beyond parity to ``reconciliation.drift``; the
   API's operator listener reads the ``reconciliation_diff_*`` gauges from the stored latest verdicts.
Runs of one tenant never overlap (a PostgreSQL advisory lock, tried: a second run is ``Busy``),
whichever process starts them.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import psycopg
import stripe

from stripemeter.adapters.postgres import locks
from stripemeter.adapters.postgres import reconciliation as db
from stripemeter.adapters.postgres.mappings import stripe_mappings
from stripemeter.adapters.stripe.reader import StripeReader
from stripemeter.core.push_plan import IDENTIFIER_WINDOW_S, Meter, Request, targets
from stripemeter.core.reconcile_compare import (
    LAG_CAP_S,
    Hour,
    Item,
    SharedPair,
    Step,
    Verdict,
    combine,
    differing,
    judge,
    judge_totals,
    relative,
    settle_time,
    shared_pairs,
)
from stripemeter.domain import metrics, periods
from stripemeter.domain.clock import SYSTEM, Clock
from stripemeter.domain.timefmt import iso_exact, iso_hour, iso_seconds
from stripemeter.schemas.drift import Drift, encode_drift

log = logging.getLogger(__name__)

CorrectionStatus = Literal["applied", "failed", "pending"]
Align = Literal["within_epsilon", "all"]  # which drift a run corrects: within epsilon only, or all
# What a send's outcome means for a correction: delivered; refused (it did not land); anything else
# (5xx, timeout, no connection after retries, 409): it may have landed, so it stays pending, its hour in
# flight, and is sent again under the same identifier (Stripe answers "already exists" if it landed).
CORRECTION_STATUS: dict[str, CorrectionStatus] = {
    "delivered": "applied",
    "refused": "failed",
    "idempotency_conflict": "failed",
}

HOUR_S = 3600
# Stripe takes meter events up to 35 days old; an hour older than this cannot be corrected by an event
CORRECTABLE_SECONDS = 35 * 24 * HOUR_S - HOUR_S
Publish = Callable[[list[bytes]], Awaitable[None]]
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class RunRequest:
    tenant_id: str
    metric: str | None = None
    period: str | None = None  # YYYY-MM; None: the current period
    align: Align = "within_epsilon"
    trigger: str = "api"
    # scheduled runs skip items whose invoice is likely final (their period closed more than the
    # invoice grace ago): they cannot change any more, and checking them again costs Stripe calls
    only_open: bool = False
    customer_ref: str | None = None  # one customer's items only (the invoice guard's runs)


@dataclass(frozen=True)
class ReconcileSettings:
    epsilon: float = 0.005
    settle_seconds: float = 300.0  # Stripe's summaries are eventually consistent
    invoice_grace_seconds: float = 72 * 3600.0  # how long a closed period's invoice can still change
    # a delivered step Stripe's summary does not show is lag for this long at most, then missing
    lag_cap_seconds: float = LAG_CAP_S
    lag_window_seconds: float = 24 * 3600.0  # how long a confirmed lag keeps the settle time up
    app_id: str = "stripemeter"  # lags are learnt per app (one deployment, one Stripe account)


@dataclass(frozen=True)
class Judging:
    """How one run judges: the settle time in use, and the hours seen lagging and not caught up yet."""

    settle_seconds: float
    lagging: set[tuple[str, str, datetime]]  # (metric, customer, bucket)


class Reconciler:
    def __init__(
        self, reader: StripeReader, publish: Publish, settings: ReconcileSettings, clock: Clock = SYSTEM
    ):
        self.clock = clock
        self.reader = reader
        self.publish = publish
        self.settings = settings

    async def run(
        self,
        conn: psycopg.AsyncConnection,
        request: RunRequest,
        now: float | None = None,
        progress: Progress | None = None,
        wait: bool = False,
    ) -> dict[str, Any]:
        """One cycle; ``progress(done, total)`` is told as items are checked against Stripe. While
        another cycle of the tenant runs it raises ``Busy`` (with ``wait``: waits for it)."""
        now = self.clock() if now is None else now
        period_name = request.period or periods.current_name(datetime.fromtimestamp(now, tz=UTC))
        lock = f"stripemeter-reconcile:{request.tenant_id}"
        busy = f"tenantId: a reconciliation of tenant {request.tenant_id!r} is running; retry when it is done"
        async with locks.held(conn, lock, busy, wait=wait):
            return await self._run_locked(conn, request, period_name, now, progress)

    async def _run_locked(
        self,
        conn: psycopg.AsyncConnection,
        request: RunRequest,
        period_name: str,
        now: float,
        progress: Progress | None,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        calls_before = self.reader.calls
        run_id = "rec_" + uuid.uuid4().hex[:20]
        await db.start_run(
            conn,
            run_id,
            request.tenant_id,
            request.metric,
            period_name,
            request.trigger,
            self.settings.epsilon,
        )
        try:
            metric_map, customer_map = await stripe_mappings(conn, request.tenant_id)
            await self._resend_pending(conn, request.tenant_id)
            items, ranges = await self._load(conn, request, period_name, now, metric_map, customer_map)
            await self._share(conn, request.tenant_id, items, ranges, metric_map, customer_map)
            meters = await self.reader.meters_by_event_name() if metric_map else {}
            judging = await self._judging(conn, request.tenant_id, now)
            lagging = {(m, c) for m, c, _ in judging.lagging}
            done = 0

            async def read(item: Item) -> Verdict | dict[int, int]:
                nonlocal done
                period, lags = ranges[_key(item)], _key(item) in lagging
                view = await self._read(item, period, metric_map, customer_map, meters, lags)
                done += 1
                if progress is not None:
                    progress(done, len(items))
                return view

            views = await asyncio.gather(*(read(item) for item in items))
            verdicts = await self._judge(conn, request.tenant_id, items, views, judging, now)
            checked_at = datetime.fromtimestamp(now, tz=UTC)
            rows, drift_records, report_items, adjusted = [], [], [], []
            counts: Counter[str] = Counter()
            for n, (item, verdict) in enumerate(zip(items, verdicts, strict=True)):
                if n % 500 == 499:
                    await asyncio.sleep(0)  # inside a worker: let the meter run between chunks
                period = ranges[_key(item)]
                action, sent = await self._act(
                    conn, run_id, request, item, verdict, meters, metric_map, customer_map, period, now
                )
                adjusted.extend(sent)
                counts[verdict.status] += 1
                counts["adjusted"] += bool(sent)
                wire = item_wire(item, verdict, action, period, checked_at)
                report_items.append(wire)
                rows.append(
                    (
                        run_id, item.tenant_id, item.metric, item.customer_ref, period_name, period.start,
                        period.end, verdict.local, verdict.stripe, verdict.diff_abs, verdict.diff_pct,
                        verdict.status, action, verdict.in_flight, verdict.causes, wire["hours"], checked_at,
                    )
                )  # fmt: skip
                metrics.RECONCILIATION_ITEMS.labels(verdict.status).inc()
                if verdict.status != "parity":
                    drift_records.append(drift_record(item, wire, period_name, action, checked_at))
            counts["stripe_calls"] = self.reader.calls - calls_before
            await db.finish_run(conn, run_id, rows, counts)
            if drift_records:
                await self.publish([encode_drift(d) for d in drift_records])
        except Exception as exc:
            await db.fail_run(conn, run_id, f"{type(exc).__name__}: {exc}")
            metrics.RECONCILIATION_RUNS.labels("failed").inc()
            raise
        seconds = time.perf_counter() - started
        metrics.RECONCILIATION_RUNS.labels("finished").inc()
        metrics.RECONCILIATION_SECONDS.observe(seconds)
        log.info(
            "reconciliation %s: tenant %s metric %s period %s: %d items, %d parity, %d within epsilon,"
            " %d drift, %d adjusted, %d Stripe calls, %.2f s",
            run_id, request.tenant_id, request.metric or "*", period_name, len(report_items),
            counts["parity"], counts["within_epsilon"], counts["drift"], counts["adjusted"],
            counts["stripe_calls"], seconds,
        )  # fmt: skip
        month = periods.period(period_name)
        return {
            "runId": run_id,
            "tenantId": request.tenant_id,
            "metric": request.metric,
            "period": month.wire(),
            "epsilon": self.settings.epsilon,
            "status": overall_status(report_items),
            "items": report_items,
            "totals": totals(report_items),
            "adjusted": adjusted,
            "flagged": [
                {
                    "metric": i["metric"],
                    "customerRef": i["customerRef"],
                    "causes": [c["code"] for c in i["causes"]],
                }
                for i in report_items
                if i["status"] == "drift"
            ],
            "stripeCalls": counts["stripe_calls"],
            "durationSeconds": round(seconds, 3),
        }

    async def _load(
        self,
        conn: psycopg.AsyncConnection,
        request: RunRequest,
        period_name: str,
        now: float,
        metric_map: dict[str, Any],
        customer_map: dict[str, Any],
    ) -> tuple[list[Item], dict[tuple[str, str], periods.Period]]:
        tenant = request.tenant_id
        month = periods.period(period_name)
        # anchored cycles start inside the month and end inside the next one
        start, end = month.start, month.end + timedelta(days=31)
        hour_rows = await db.hours(conn, tenant, request.metric, start, end, request.customer_ref)
        late_rows = await db.late_events(conn, tenant, request.metric, start, end)
        # an hour with an unanswered correction is in flight until Stripe answers it (it may have landed)
        corrected = {
            (r["metric"], r["customer_ref"], int(r["bucket"].timestamp())): (
                math.inf if r["pending"] else float(r["at"])
            )
            for r in await db.recent_corrections(conn, tenant, request.metric, start, end)
        }
        wanted = (
            [request.metric] if request.metric else sorted(set(metric_map) | {r["metric"] for r in hour_rows})
        )
        keys = {(r["metric"], r["customer_ref"]) for r in hour_rows if r["metric"] in wanted}
        keys |= {(m, c) for m in wanted if m in metric_map for c in customer_map}
        if request.customer_ref is not None:
            keys = {(m, c) for m, c in keys if c == request.customer_ref}
        items: dict[tuple[str, str], Item] = {}
        ranges: dict[tuple[str, str], periods.Period] = {}
        for metric, customer in sorted(keys):
            anchor = customer_map[customer][1] if customer in customer_map else None
            period = periods.period(period_name, anchor)
            if period.start.timestamp() > now:
                continue  # this customer's cycle of that name has not begun
            if request.only_open and period.end.timestamp() < now - self.settings.invoice_grace_seconds:
                continue
            missing = []
            if metric not in metric_map:
                missing.append("metric mapping")
            if customer not in customer_map:
                missing.append("customer mapping")
            aggregation = metric_map[metric][1] if metric in metric_map else "sum"
            items[(metric, customer)] = Item(tenant, metric, customer, aggregation, missing=missing)
            ranges[(metric, customer)] = period
        raw: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in hour_rows:
            key = (r["metric"], r["customer_ref"])
            if key in items and ranges[key].holds(r["bucket"]):
                raw.setdefault(key, []).append(r)
        corrected_at: dict[tuple[str, str], dict[int, float]] = {}
        for (metric, customer, bucket), at in corrected.items():
            corrected_at.setdefault((metric, customer), {})[bucket] = at
        for key, rows in raw.items():
            items[key].hours = build_hours(items[key].aggregation, rows, corrected_at.get(key, {}))
        for r in late_rows:
            key = (r["metric"], r["customer_ref"])
            if key in items and ranges[key].holds(r["bucket"]):
                items[key].late_count += int(r["n"])
                items[key].late_micros += int(r["micros"] or 0)
        for (metric, customer, bucket), at in corrected.items():
            item = items.get((metric, customer))
            if item is not None and bucket not in item.hours:  # a correction into an hour we never counted
                item.hours[bucket] = Hour(0, None, None, None, at)
        return list(items.values()), ranges

    async def _share(
        self,
        conn: psycopg.AsyncConnection,
        tenant: str,
        items: list[Item],
        ranges: dict[tuple[str, str], periods.Period],
        metric_map: dict[str, Any],
        customer_map: dict[str, Any],
    ) -> None:
        """Mark the items whose Stripe pair other counters feed too (existing data may hold such
        mappings); a pair of sum and count counters is compared as their sum."""
        rows = await db.shared_pairs(conn, tenant)
        if not rows:
            return
        pairs = shared_pairs(rows)
        summed: dict[tuple[str, str, datetime], dict[int, Hour]] = {}
        for item in items:
            if item.metric not in metric_map or item.customer_ref not in customer_map:
                continue
            pair = pairs.get((metric_map[item.metric][0], customer_map[item.customer_ref][0]))
            if pair is None:
                continue
            item.shared = pair
            if pair.summed:
                period = ranges[_key(item)]
                key = (pair.event_name, pair.stripe_customer, period.start)
                if key not in summed:
                    summed[key] = await self._pair_hours(conn, pair, period)
                item.hours = dict(summed[key])

    @staticmethod
    async def _pair_hours(
        conn: psycopg.AsyncConnection, pair: SharedPair, period: periods.Period
    ) -> dict[int, Hour]:
        """The pair's hours of a period: every member counter's hours, added up."""
        per_member = []
        for tenant, metric, customer in pair.members:
            rows = await db.hours(conn, tenant, metric, period.start, period.end, customer)
            per_member.append(build_hours("sum", [r for r in rows if period.holds(r["bucket"])], {}))
        buckets = set().union(*per_member)
        return {b: combine([hours[b] for hours in per_member if b in hours]) for b in sorted(buckets)}

    async def _judging(self, conn: psycopg.AsyncConnection, tenant: str, now: float) -> Judging:
        settings, at = self.settings, datetime.fromtimestamp(now, tz=UTC)
        since = datetime.fromtimestamp(now - settings.lag_window_seconds, tz=UTC)
        longest = await db.longest_lag(conn, settings.app_id, since, at)
        settle = settle_time(settings.settle_seconds, longest, settings.lag_cap_seconds)
        if settle > settings.settle_seconds:
            log.info("Stripe's summaries lagged up to %.0f s lately: settle time %.0f s", longest, settle)
        since = datetime.fromtimestamp(now - settings.lag_cap_seconds, tz=UTC)
        return Judging(settle, await db.open_lags(conn, settings.app_id, tenant, since, at))

    async def _read(
        self,
        item: Item,
        period: periods.Period,
        metric_map: dict[str, Any],
        customer_map: dict[str, Any],
        meters: dict[str, Meter],
        lagging: bool,
    ) -> Verdict | dict[int, int]:
        """Parity from the period totals, or Stripe's hours to judge. An item with an hour seen lagging
        is read by hour, so the lag is confirmed once Stripe shows it."""
        if item.missing:
            return {}
        event_name = metric_map[item.metric][0]
        meter = meters.get(event_name)
        if meter is None or not meter.active:
            item.missing.append(f"active Stripe meter for event name {event_name!r}")
            return {}
        meter_id = meter.id
        customer = customer_map[item.customer_ref][0]
        start, end = int(period.start.timestamp()), int(period.end.timestamp())
        try:
            if not lagging:
                verdict = judge_totals(item, await self.reader.period_total(meter_id, customer, start, end))
                if verdict is not None:
                    return verdict
            # hour summaries take hour-aligned bounds: the hours whose start lies in the period
            first, after = int(period.first_hour.timestamp()), int(period.hours_end.timestamp())
            return await self.reader.hourly(meter_id, customer, first, after)
        except stripe.InvalidRequestError as exc:
            # e.g. the mapped Stripe customer does not exist: a mapping problem, not a failed run
            item.missing.append(f"valid Stripe customer ({exc.user_message or exc})")
            return {}

    async def _judge(
        self,
        conn: psycopg.AsyncConnection,
        tenant: str,
        items: list[Item],
        views: list[Verdict | dict[int, int]],
        judging: Judging,
        now: float,
    ) -> list[Verdict]:
        """Judge the items read by hour, with the steps of the hours that differ (or were seen
        lagging), and record what the run learnt about Stripe's lag."""
        read_by_hour = [
            (item, view) for item, view in zip(items, views, strict=True) if isinstance(view, dict)
        ]
        await self._load_steps(conn, tenant, read_by_hour, judging)
        settings = self.settings
        judged = {
            id(item): judge(
                item, view, now, judging.settle_seconds, settings.epsilon, settings.lag_cap_seconds
            )
            for item, view in read_by_hour
        }
        await self._learn(conn, tenant, [(item, judged[id(item)]) for item, _ in read_by_hour], judging, now)
        return [
            view if isinstance(view, Verdict) else judged[id(item)]
            for item, view in zip(items, views, strict=True)
        ]

    async def _load_steps(
        self,
        conn: psycopg.AsyncConnection,
        tenant: str,
        read_by_hour: list[tuple[Item, dict[int, int]]],
        judging: Judging,
    ) -> None:
        """Give the hours that differ from Stripe (and those seen lagging) what Stripe took for them."""
        wanted: list[tuple[str, str, datetime]] = []
        for item, view in read_by_hour:
            if item.shared:
                continue  # never corrected: nothing to chase
            lagged = {int(b.timestamp()) for m, c, b in judging.lagging if (m, c) == _key(item)}
            for bucket in sorted(set(item.hours) & (differing(item, view) | lagged)):
                wanted.append((item.metric, item.customer_ref, datetime.fromtimestamp(bucket, tz=UTC)))
        found: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
        for row in await db.steps(conn, tenant, wanted):
            key = (row["metric"], row["customer_ref"], int(row["bucket"].timestamp()))
            found.setdefault(key, []).append(row)
        for item, _ in read_by_hour:
            for bucket, hour in item.hours.items():
                rows = found.get((item.metric, item.customer_ref, bucket))
                if rows:
                    item.hours[bucket] = with_steps(item.aggregation, hour, rows)

    async def _learn(
        self,
        conn: psycopg.AsyncConnection,
        tenant: str,
        judged: list[tuple[Item, Verdict]],
        judging: Judging,
        now: float,
    ) -> None:
        """Record the hours seen lagging, and confirm the lags of those a read shows caught up."""
        lags: list[tuple[db.LagKey, float]] = []
        shown: list[db.LagKey] = []
        for item, verdict in judged:
            for lag in verdict.lags:
                at = datetime.fromtimestamp(lag.bucket, tz=UTC)
                lags.append(((item.metric, item.customer_ref, at, lag.unseen_since), lag.seconds))
            for bucket, times in verdict.shown:
                at = datetime.fromtimestamp(bucket, tz=UTC)
                if (item.metric, item.customer_ref, at) in judging.lagging:
                    shown.extend((item.metric, item.customer_ref, at, t) for t in times)
        checked, app = datetime.fromtimestamp(now, tz=UTC), self.settings.app_id
        await db.confirm_lags(conn, app, tenant, shown, checked)
        await db.record_lags(conn, app, tenant, lags, checked)

    async def _act(
        self,
        conn: psycopg.AsyncConnection,
        run_id: str,
        request: RunRequest,
        item: Item,
        verdict: Verdict,
        meters: dict[str, Meter],
        metric_map: dict[str, Any],
        customer_map: dict[str, Any],
        period: periods.Period,
        now: float,
    ) -> tuple[str, list[dict[str, Any]]]:
        """Send the corrections the policy allows; returns the item's action and what was sent."""
        if verdict.status == "parity":
            return ("wait" if verdict.in_flight else "none"), []
        allowed = verdict.status == "within_epsilon" or request.align == "all"
        corrections = [(b, v) for b, v in verdict.corrections if now - b < CORRECTABLE_SECONDS]
        if not allowed or not corrections or len(corrections) != len(verdict.hours):
            return "replay", []
        meter = meters.get(metric_map[item.metric][0])
        if meter is None:
            return "replay", []
        if not await self._unchanged(conn, item, [b for b, _ in corrections], period):
            return "wait", []  # the writer or new usage moved an hour since it was read: in flight
        customer = customer_map[item.customer_ref][0]
        sent: list[dict[str, Any]] = []
        for bucket, value in corrections:
            identifier = correction_identifier(item, bucket, run_id)
            correction = Request(
                identifier, meter.event_name, {meter.customer_key: customer, meter.value_key: str(value)},
                bucket, value, value,  # stamped at the hour's start, like the writer's
            )  # fmt: skip
            key = (item.tenant_id, item.metric, item.customer_ref)
            bucket_dt = datetime.fromtimestamp(bucket, tz=UTC)
            seen = next((h["stripe"] for h in verdict.hours if h["bucket"] == bucket), None)
            await db.record_correction(conn, correction, key, bucket_dt, run_id, self.clock.utc(), seen)
            status, reason = await self._send(conn, correction, 0)
            if status == "failed":
                log.warning("Stripe refused correction %s for %s/%s/%s: %s", identifier, *key, reason)
                return "replay", sent
            if status == "pending":
                log.warning(
                    "correction %s for %s/%s/%s not answered (%s): it may have landed; sent again under its"
                    " identifier by the next run", identifier, *key, reason,
                )  # fmt: skip
                return "wait", sent
            log.info(
                "adjusted %s/%s/%s @%s by %+d in Stripe (%s)",
                *key,
                iso_hour(bucket * 1000),
                value,
                identifier,
            )
            sent.append(
                {
                    "adjustmentId": identifier,
                    "metric": item.metric,
                    "customerRef": item.customer_ref,
                    "bucket": iso_hour(bucket * 1000),
                    "value": value,
                }
            )
        return "adjusted", sent

    async def _unchanged(
        self, conn: psycopg.AsyncConnection, item: Item, buckets: list[int], period: periods.Period
    ) -> bool:
        """Whether the hours to correct still read as they did before Stripe was read: a correction is
        never built on a local snapshot older than its Stripe reads."""
        rows = await db.hours(conn, item.tenant_id, item.metric, period.start, period.end, item.customer_ref)
        now_seen = {int(r["bucket"].timestamp()): r for r in rows}
        for bucket in buckets:
            before, after = item.hours.get(bucket), now_seen.get(bucket)
            if before is None and after is None:
                continue
            if before is None or after is None:
                return False
            pushed = int(after["pushed_units"]) if after["pushed_units"] is not None else None
            exact = int(after["local_micros"]) if after["local_micros"] is not None else 0
            if (exact, pushed, after["status"]) != (before.exact_micros, before.pushed, before.writer_status):
                return False
        return True

    async def _send(
        self, conn: psycopg.AsyncConnection, request: Request, attempt: int
    ) -> tuple[CorrectionStatus, str]:
        """Send a recorded correction and store what the answer means (see ``CORRECTION_STATUS``);
        returns its status and Stripe's reason. A 5xx moves the next resend to a new idempotency key."""
        result = await self.reader.send(request, attempt)
        status = CORRECTION_STATUS.get(result.outcome, "pending")
        await db.finish_correction(
            conn, request.identifier, status, result.reason or None, self.clock.utc(),
            # Stripe replays a stored 500, and a stored refusal, to the same key
            new_key=result.outcome in ("server_error", "refused_for_now"),
        )  # fmt: skip
        if status == "applied":
            metrics.RECONCILIATION_ADJUSTMENTS.inc()
        return status, result.reason

    async def _resend_pending(self, conn: psycopg.AsyncConnection, tenant: str) -> None:
        """Corrections recorded but not answered clearly (a crash mid-call, a 5xx, a timeout): the
        recorded request again, under its identifier, while Stripe keeps identifiers; after that never
        (it could count twice): marked unknown, and the hour is judged by Stripe's settled summaries."""
        now = self.clock()
        for row in await db.pending_corrections(conn, tenant):
            request = Request.from_wire(row["request"]) if row["request"] else None
            if request is None:
                await db.finish_correction(
                    conn, row["adjustment_id"], "unknown", "recorded without its request (before an upgrade)",
                    self.clock.utc(),
                )  # fmt: skip
            elif now - row["created_at"].timestamp() > IDENTIFIER_WINDOW_S:
                log.warning(
                    "correction %s unanswered for longer than Stripe keeps identifiers: not sent again",
                    row["adjustment_id"],
                )
                await db.finish_correction(
                    conn, row["adjustment_id"], "unknown", f"no clear answer from Stripe within 24 h (last:"
                    f" {row['error'] or 'none'}); not sent again: Stripe's summaries show whether it landed",
                    self.clock.utc(),
                )  # fmt: skip
            else:
                await self._send(conn, request, int(row["send_attempt"]))


def build_hours(
    aggregation: str, rows: list[dict[str, Any]], corrected_at: dict[int, float]
) -> dict[int, Hour]:
    """A stream's hours of one period (db.hours rows): what Stripe should hold per hour, in whole units
    with fractions carried as the writer pushes them; an hour corrected later than it changed counts
    as changed then."""
    rows = sorted(rows, key=lambda r: r["bucket"])
    micros = [int(r["local_micros"]) if r["local_micros"] is not None else 0 for r in rows]
    hours = {}
    for r, exact, target in zip(rows, micros, targets(aggregation, micros), strict=True):
        bucket = int(r["bucket"].timestamp())
        changed_at = max(float(r["changed_at"]), corrected_at.get(bucket, 0.0))
        pushed = int(r["pushed_units"]) if r["pushed_units"] is not None else None
        hours[bucket] = Hour(target, pushed, r["status"], r["reason"], changed_at, exact)
    return hours


def with_steps(aggregation: str, hour: Hour, rows: list[dict[str, Any]]) -> Hour:
    """The hour with what Stripe took for it (db.steps rows, in delivery order). For a sum, the units
    its pushed units count beyond its logged requests (delivered before requests were logged) are
    where it starts; units corrections stand in for are not among them."""
    steps, pushes, covered = [], 0, 0
    for row in rows:
        if row["kind"] == "push":
            value = int(row["to_units"] if aggregation == "last" else row["value"])
            steps.append(Step(float(row["at"]), value))
            pushes += int(row["value"])
        elif row["kind"] == "correction":
            seen = int(row["seen"]) if row["seen"] is not None else None
            steps.append(Step(float(row["at"]), int(row["value"]), seen))
        else:
            covered += int(row["value"])
    base = (hour.pushed or 0) - pushes - covered if aggregation != "last" else 0
    return replace(hour, steps=tuple(steps), base=base)


def _key(item: Item) -> tuple[str, str]:
    return (item.metric, item.customer_ref)


def correction_identifier(item: Item, bucket: int, run_id: str) -> str:
    counter = "\x1f".join([item.tenant_id, item.metric, item.customer_ref, str(bucket)])
    return f"smrec_{hashlib.sha256(counter.encode()).hexdigest()[:24]}_{run_id}"


def item_wire(
    item: Item, verdict: Verdict, action: str, period: periods.Period, checked_at: datetime
) -> dict[str, Any]:
    return {
        "metric": item.metric,
        "customerRef": item.customer_ref,
        "periodStart": iso_seconds(period.start),
        "periodEnd": iso_seconds(period.end),
        "local": verdict.local,
        "stripe": verdict.stripe,
        "diffAbs": verdict.diff_abs,
        "diffPct": round(verdict.diff_pct, 6),
        "status": verdict.status,
        "action": action,
        "inFlight": verdict.in_flight,
        "causes": verdict.causes,
        "hours": [{**h, "bucket": iso_hour(h["bucket"] * 1000)} for h in verdict.hours],
        "checkedAt": iso_exact(checked_at),
    }


def drift_record(item: Item, wire: dict[str, Any], period_name: str, action: str, at: datetime) -> Drift:
    """The contract's reconciliation.drift record, plus the causes and the differing hours."""
    return Drift(
        item.tenant_id, item.metric, item.customer_ref, period_name, wire["local"], wire["stripe"],
        wire["diffAbs"], wire["diffPct"], wire["status"], action, at, wire["causes"], wire["hours"],
    )  # fmt: skip


def overall_status(items: list[dict[str, Any]]) -> str:
    return status_of(i["status"] for i in items)


def status_of(statuses: Iterable[str]) -> str:
    """The worst of the items' statuses (parity when there are none)."""
    present = set(statuses)
    return "drift" if "drift" in present else "within_epsilon" if "within_epsilon" in present else "parity"


def totals(items: list[dict[str, Any]]) -> dict[str, Any]:
    local = sum(i["local"] for i in items)
    stripe_total = sum(i["stripe"] for i in items)
    diff = sum(i["diffAbs"] for i in items)
    return {
        "local": local,
        "stripe": stripe_total,
        "diffAbs": diff,
        "diffPct": round(relative(diff, local, stripe_total), 6),
    }
