"""A run's first step, check: every item's local hours against Stripe's summaries, judged.

1. Load the period's hours from PostgreSQL: local totals, what the writer delivered, late events,
   recent corrections; and the mappings. The settle time is the configured one or, if longer, a
   multiple of the longest lag of Stripe's summaries confirmed lately (``stripe_summary_lags``).
2. An incremental run (the schedule's) keeps only the items due a read (core/reconcile_due.py: they
   changed since their last proven parity, were never proven, or their sweep or closing turn came).
   Ask Stripe for each customer's period total (one call). Equal totals are parity; otherwise list
   the customer's hours, load what Stripe took for the hours that differ (delivered requests and
   applied corrections, in order) and judge each (stripemeter/core/reconcile_compare.py); record
   the lags seen and the ones a read shows were lag.

The verdicts are pure; so are the items built from the rows (``plan_items``, ``build_hours``,
``with_steps``) and what the run learnt about lag (``lag_records``).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import stripe

from stripemeter.adapters.postgres import reconciliation as db
from stripemeter.adapters.postgres.mappings import stripe_mappings
from stripemeter.adapters.stripe.reader import StripeReader
from stripemeter.core.push_plan import StripeMeterSpec, targets
from stripemeter.core.reconcile_compare import (
    Hour,
    Item,
    SharedPair,
    Step,
    Verdict,
    combine,
    differing,
    judge,
    judge_totals,
    settle_time,
    shared_pairs,
)
from stripemeter.core.reconcile_due import Proof, Sweep, digest, phase, reason
from stripemeter.domain import periods
from stripemeter.services.reconciliation.request import ReconcileSettings, RunRequest

log = logging.getLogger(__name__)

Key = tuple[str, str]  # metric, customer ref
HourKey = tuple[str, str, datetime]  # metric, customer ref, bucket
Progress = Callable[[int, int], None]  # told (items checked, items) as Stripe is read
StripeView = Verdict | dict[int, int]  # parity from the period totals, or Stripe's value per hour


@dataclass(frozen=True)
class Mappings:
    metrics: dict[str, Any]  # metric -> (meter event name, aggregation)
    customers: dict[str, Any]  # customer ref -> (Stripe customer id, billing anchor)


@dataclass(frozen=True)
class Checked:
    """One item judged, over its customer's period."""

    item: Item
    verdict: Verdict
    period: periods.Period


@dataclass(frozen=True)
class Check:
    """What a run's check found: every item read and judged, and the mappings and meters acting on them
    needs; for an incremental run, why each item was read or left (``reasons``: counts by reason)."""

    items: list[Checked]
    mappings: Mappings
    meters: dict[str, StripeMeterSpec]  # by meter event name
    digests: dict[Key, str] = field(default_factory=dict)  # each read item's local state (reconcile_due)
    reasons: dict[str, int] = field(default_factory=dict)

    def meter_of(self, item: Item) -> StripeMeterSpec | None:
        mapped = self.mappings.metrics.get(item.metric)
        return self.meters.get(mapped[0]) if mapped is not None else None


@dataclass(frozen=True)
class Judging:
    """How one run judges: the settle time in use, and the hours seen lagging and not caught up yet."""

    settle_seconds: float
    lagging: set[HourKey]


class Checker:
    def __init__(self, reader: StripeReader, settings: ReconcileSettings):
        self.reader = reader
        self.settings = settings

    async def check(
        self,
        conn: psycopg.AsyncConnection,
        request: RunRequest,
        period_name: str,
        now: float,
        progress: Progress | None = None,
    ) -> Check:
        mappings = Mappings(*await stripe_mappings(conn, request.tenant_id))
        items, ranges = await self._load(conn, request, period_name, now, mappings)
        await self._share(conn, request.tenant_id, items, ranges, mappings)
        meters = await self.reader.meters_by_event_name() if mappings.metrics else {}
        judging = await self._judging(conn, request.tenant_id, now)
        lagging = {(m, c) for m, c, _ in judging.lagging}
        digests = {key_of(item): item_digest(item, ranges[key_of(item)], mappings) for item in items}
        reasons: dict[str, int] = {}
        if request.incremental:
            stored = await db.proofs(conn, request.tenant_id, period_name, request.metric)
            proofs = {k: Proof(at.timestamp(), d) for k, (at, d) in stored.items()}
            items, reasons = due_items(items, ranges, digests, proofs, lagging, now, self.sweep)
        done = 0

        async def read(item: Item) -> StripeView:
            nonlocal done
            view = await self._read(item, ranges[key_of(item)], mappings, meters, key_of(item) in lagging)
            done += 1
            if progress is not None:
                progress(done, len(items))
            return view

        views = await asyncio.gather(*(read(item) for item in items))
        verdicts = await self._judge(conn, request.tenant_id, items, views, judging, now)
        checked = [
            Checked(item, verdict, ranges[key_of(item)])
            for item, verdict in zip(items, verdicts, strict=True)
        ]
        proved = {key_of(c.item): digests[key_of(c.item)] for c in checked}
        return Check(checked, mappings, meters, proved, reasons)

    @property
    def sweep(self) -> Sweep:
        settings = self.settings
        return Sweep(settings.sweep_seconds, settings.interval_seconds, settings.closing_seconds)

    async def _load(
        self,
        conn: psycopg.AsyncConnection,
        request: RunRequest,
        period_name: str,
        now: float,
        mappings: Mappings,
    ) -> tuple[list[Item], dict[Key, periods.Period]]:
        tenant = request.tenant_id
        month = periods.period(period_name)
        # anchored cycles start inside the month and end inside the next one
        start, end = month.start, month.end + timedelta(days=31)
        hour_rows = await db.hours(conn, tenant, request.metric, start, end, request.customer_ref)
        late_rows = await db.late_events(conn, tenant, request.metric, start, end)
        correction_rows = await db.recent_corrections(conn, tenant, request.metric, start, end)
        grace = self.settings.invoice_grace_seconds
        return plan_items(request, period_name, now, grace, mappings, hour_rows, late_rows, correction_rows)

    async def _share(
        self,
        conn: psycopg.AsyncConnection,
        tenant: str,
        items: list[Item],
        ranges: dict[Key, periods.Period],
        mappings: Mappings,
    ) -> None:
        """Mark the items whose Stripe pair other counters feed too (existing data may hold such
        mappings); a pair of sum and count counters is compared as their sum."""
        rows = await db.shared_pairs(conn, tenant)
        if not rows:
            return
        pairs = shared_pairs(rows)
        summed: dict[tuple[str, str, datetime], dict[int, Hour]] = {}
        for item in items:
            if item.metric not in mappings.metrics or item.customer_ref not in mappings.customers:
                continue
            pair = pairs.get((mappings.metrics[item.metric][0], mappings.customers[item.customer_ref][0]))
            if pair is None:
                continue
            item.shared = pair
            if pair.summed:
                period = ranges[key_of(item)]
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
        mappings: Mappings,
        meters: dict[str, StripeMeterSpec],
        lagging: bool,
    ) -> StripeView:
        """Parity from the period totals, or Stripe's hours to judge. An item with an hour seen lagging
        is read by hour, so the lag is confirmed once Stripe shows it."""
        if item.missing:
            return {}
        event_name = mappings.metrics[item.metric][0]
        meter = meters.get(event_name)
        if meter is None or not meter.active:
            item.missing.append(f"active Stripe meter for event name {event_name!r}")
            return {}
        meter_id = meter.id
        customer = mappings.customers[item.customer_ref][0]
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
        views: list[StripeView],
        judging: Judging,
        now: float,
    ) -> list[Verdict]:
        """Judge the items read by hour, with the steps of the hours that differ (or were seen
        lagging), and record what the run learnt about Stripe's lag."""
        read_by_hour = [
            (item, view) for item, view in zip(items, views, strict=True) if isinstance(view, dict)
        ]
        wanted = hours_to_chase(read_by_hour, judging.lagging)
        give_steps([item for item, _ in read_by_hour], await db.steps(conn, tenant, wanted))
        settings = self.settings
        judged = {
            id(item): judge(
                item, view, now, judging.settle_seconds, settings.epsilon, settings.lag_cap_seconds
            )
            for item, view in read_by_hour
        }
        lags, shown = lag_records([(item, judged[id(item)]) for item, _ in read_by_hour], judging.lagging)
        checked, app = datetime.fromtimestamp(now, tz=UTC), settings.app_id
        await db.confirm_lags(conn, app, tenant, shown, checked)
        await db.record_lags(conn, app, tenant, lags, checked)
        return [
            view if isinstance(view, Verdict) else judged[id(item)]
            for item, view in zip(items, views, strict=True)
        ]


def plan_items(
    request: RunRequest,
    period_name: str,
    now: float,
    invoice_grace_seconds: float,
    mappings: Mappings,
    hour_rows: list[dict[str, Any]],
    late_rows: list[dict[str, Any]],
    correction_rows: list[dict[str, Any]],
) -> tuple[list[Item], dict[Key, periods.Period]]:
    """The run's items and each one's period, from the rows of ``db.hours``, ``db.late_events`` and
    ``db.recent_corrections``: every mapped or counted (metric, customer) the request asks for, whose
    customer's cycle of that name has begun (and, for ``only_open``, whose invoice can still change)."""
    tenant = request.tenant_id
    # an hour with an unanswered correction is in flight until Stripe answers it (it may have landed)
    corrected = {
        (r["metric"], r["customer_ref"], int(r["bucket"].timestamp())): (
            math.inf if r["pending"] else float(r["at"])
        )
        for r in correction_rows
    }
    wanted = (
        [request.metric]
        if request.metric
        else sorted(set(mappings.metrics) | {r["metric"] for r in hour_rows})
    )
    keys = {(r["metric"], r["customer_ref"]) for r in hour_rows if r["metric"] in wanted}
    keys |= {(m, c) for m in wanted if m in mappings.metrics for c in mappings.customers}
    if request.customer_ref is not None:
        keys = {(m, c) for m, c in keys if c == request.customer_ref}
    items: dict[Key, Item] = {}
    ranges: dict[Key, periods.Period] = {}
    cycles: dict[datetime | None, periods.Period] = {}
    for metric, customer in sorted(keys):
        anchor = mappings.customers[customer][1] if customer in mappings.customers else None
        if anchor not in cycles:  # most customers share a few anchors (None: the calendar month)
            cycles[anchor] = periods.period(period_name, anchor)
        period = cycles[anchor]
        if period.start.timestamp() > now:
            continue  # this customer's cycle of that name has not begun
        if request.only_open and period.end.timestamp() < now - invoice_grace_seconds:
            continue
        missing = []
        if metric not in mappings.metrics:
            missing.append("metric mapping")
        if customer not in mappings.customers:
            missing.append("customer mapping")
        aggregation = mappings.metrics[metric][1] if metric in mappings.metrics else "sum"
        items[(metric, customer)] = Item(tenant, metric, customer, aggregation, missing=missing)
        ranges[(metric, customer)] = period
    raw: dict[Key, list[dict[str, Any]]] = {}
    for r in hour_rows:
        key = (r["metric"], r["customer_ref"])
        if key in items and ranges[key].holds(r["bucket"]):
            raw.setdefault(key, []).append(r)
    corrected_at: dict[Key, dict[int, float]] = {}
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
    marks: dict[Key, list[tuple[int, float, bool, int]]] = {}
    for r in correction_rows:
        key = (r["metric"], r["customer_ref"])
        if key in items and ranges[key].holds(r["bucket"]):
            mark = (int(r["bucket"].timestamp()), float(r["at"]), bool(r["pending"]), int(r.get("n") or 1))
            marks.setdefault(key, []).append(mark)
    for key, found in marks.items():
        items[key].corrections = tuple(sorted(found))
    return list(items.values()), ranges


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
        revision = int(r.get("revision") or 0)
        hours[bucket] = Hour(target, pushed, r["status"], r["reason"], changed_at, exact, revision=revision)
    return hours


def item_digest(item: Item, period: periods.Period, mappings: Mappings) -> str:
    """The item's local state (core/reconcile_due.digest), with what its mappings say."""
    metric, customer = mappings.metrics.get(item.metric), mappings.customers.get(item.customer_ref)
    mapping = (metric[0], customer[0]) if metric is not None and customer is not None else None
    return digest(item, mapping, (period.start.timestamp(), period.end.timestamp()))


def due_items(
    items: list[Item],
    ranges: dict[Key, periods.Period],
    digests: dict[Key, str],
    proofs: dict[Key, Proof],
    lagging: set[Key],
    now: float,
    sweep: Sweep,
) -> tuple[list[Item], dict[str, int]]:
    """The items an incremental run reads from Stripe (core/reconcile_due.reason), and how many items
    each reason covers (``unchanged``: those it leaves)."""
    due: list[Item] = []
    reasons: dict[str, int] = {}
    for item in items:
        key = key_of(item)
        why = reason(
            proofs.get(key), digests[key], now, ranges[key].end.timestamp(),
            phase(item.tenant_id, item.metric, item.customer_ref), sweep, key in lagging,
        )  # fmt: skip
        reasons[why] = reasons.get(why, 0) + 1
        if why != "unchanged":
            due.append(item)
    return due, reasons


def hours_to_chase(read_by_hour: list[tuple[Item, dict[int, int]]], lagging: set[HourKey]) -> list[HourKey]:
    """The hours whose steps judging needs: those that differ from Stripe, and those seen lagging
    (never a shared pair's: it is never corrected, so there is nothing to chase)."""
    wanted: list[HourKey] = []
    for item, view in read_by_hour:
        if item.shared:
            continue
        lagged = {int(b.timestamp()) for m, c, b in lagging if (m, c) == key_of(item)}
        for bucket in sorted(set(item.hours) & (differing(item, view) | lagged)):
            wanted.append((item.metric, item.customer_ref, datetime.fromtimestamp(bucket, tz=UTC)))
    return wanted


def give_steps(items: list[Item], rows: list[dict[str, Any]]) -> None:
    """Give the items' hours what Stripe took for them (``db.steps`` rows, in delivery order)."""
    found: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for row in rows:
        found.setdefault((row["metric"], row["customer_ref"], int(row["bucket"].timestamp())), []).append(row)
    for item in items:
        for bucket, hour in item.hours.items():
            steps = found.get((item.metric, item.customer_ref, bucket))
            if steps:
                item.hours[bucket] = with_steps(item.aggregation, hour, steps)


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


def lag_records(
    judged: list[tuple[Item, Verdict]], lagging: set[HourKey]
) -> tuple[list[tuple[db.LagKey, float]], list[db.LagKey]]:
    """What the run learnt about Stripe's lag: the hours seen lagging (with how long), and the steps of
    hours seen lagging before that a read now shows (their lags were Stripe's, not losses)."""
    lags: list[tuple[db.LagKey, float]] = []
    shown: list[db.LagKey] = []
    for item, verdict in judged:
        for lag in verdict.lags:
            at = datetime.fromtimestamp(lag.bucket, tz=UTC)
            lags.append(((item.metric, item.customer_ref, at, lag.unseen_since), lag.seconds))
        for bucket, times in verdict.shown:
            at = datetime.fromtimestamp(bucket, tz=UTC)
            if (item.metric, item.customer_ref, at) in lagging:
                shown.extend((item.metric, item.customer_ref, at, t) for t in times)
    return lags, shown


def key_of(item: Item) -> Key:
    return (item.metric, item.customer_ref)
