"""Benchmark: scheduled reconciliation passes over many customers, against the emulator over HTTP.

The state is written straight into PostgreSQL and the emulator (as if the pipeline had run), with a
little drift in 1 % of the customers so that the hourly path is exercised too. The first pass has no
proofs yet and reads every item: it is timed next to the baseline, the bare Stripe calls (one period
summary per customer with the same client and concurrency, nothing else). Then the application's
clock moves one interval per pass and a share of the customers change between passes (one more
unit counted and delivered, as the writer would): each pass reads Stripe only for what changed, what
the first pass left unproven, and its share of the rolling sweep. Rate limiting is off: this measures
our cost and the reads a pass needs, not Stripe's limit.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import stripe

from stripemeter.adapters.stripe.budget import StripeBudget
from stripemeter.adapters.stripe.client import make_client
from stripemeter.adapters.stripe.reader import StripeReader
from stripemeter.domain.clock import Clock
from stripemeter.domain.config import Settings
from stripemeter.domain.periods import current_name
from stripemeter.domain.periods import period as period_of
from stripemeter.domain.units import MICROS
from stripemeter.services.reconciliation.request import ReconcileSettings, RunRequest
from stripemeter.services.reconciliation.run import Reconciler
from stripemeter.tools.bench import emulator_with_meter
from stripemeter.tools.local.procs import free_port
from stripemeter.tools.stripe_emulator import EmulatorState

Say = Callable[[str], None]
HOUR = 3600
CONCURRENCY = 16


def bench_hours(now: int, count: int) -> list[int]:
    """``count`` settled hours before now, all in the period of the oldest one."""
    current = now - now % HOUR
    hours = [current - k * HOUR for k in range(count, 0, -1)]
    period = current_name(datetime.fromtimestamp(hours[-1], tz=UTC))
    return [h for h in hours if current_name(datetime.fromtimestamp(h, tz=UTC)) == period]


async def copy_rows(conn: psycopg.AsyncConnection, statement: str, rows: list[tuple[Any, ...]]) -> None:
    async with conn.cursor() as cur, cur.copy(statement) as copy:
        for row in rows:
            await copy.write_row(row)


async def map_customers(
    conn: psycopg.AsyncConnection, state: EmulatorState, tenant: str, event_name: str, customers: int
) -> list[str]:
    """The metric `requests` mapped to ``event_name``, and customers ``c0..`` created in the emulator
    and mapped to them; returns their Stripe ids."""
    await conn.execute(
        "INSERT INTO metric_mappings (tenant_id, metric, stripe_meter_event_name, aggregation)"
        " VALUES (%s, 'requests', %s, 'sum')",
        (tenant, event_name),
    )
    ids = [state.create_customer({"email": f"c{c}@example.com"})["id"] for c in range(customers)]
    await copy_rows(
        conn,
        "COPY customer_mappings (tenant_id, customer_ref, stripe_customer_id) FROM STDIN",
        [(tenant, f"c{c}", cus) for c, cus in enumerate(ids)],
    )
    return ids


def units_of(customer: int) -> int:
    return 100 + customer % 50


async def seed(
    conn: psycopg.AsyncConnection,
    state: EmulatorState,
    tenant: str,
    event_name: str,
    customers: int,
    hours: list[int],
) -> int:
    """Mappings, counters, writer state and Stripe's events for every customer; returns how many
    customers drift (one unit too many in Stripe, within epsilon)."""
    ids = await map_customers(conn, state, tenant, event_name, customers)
    settled = datetime.fromtimestamp(hours[-1], tz=UTC)  # changed an hour or more ago
    cells = [(c, datetime.fromtimestamp(h, tz=UTC)) for c in range(customers) for h in hours]
    await copy_rows(
        conn,
        "COPY counters (tenant_id, metric, customer_ref, bucket, total_micros, seq, updated_at) FROM STDIN",
        [(tenant, "requests", f"c{c}", b, units_of(c) * MICROS, 1, settled) for c, b in cells],
    )
    await copy_rows(
        conn,
        "COPY stripe_pushes (tenant_id, metric, customer_ref, bucket, latest_micros, latest_seq,"
        " pushed_units, status, updated_at) FROM STDIN",
        [
            (tenant, "requests", f"c{c}", b, units_of(c) * MICROS, 1, units_of(c), "synced", settled)
            for c, b in cells
        ],
    )
    drifted = 0
    for c, cus in enumerate(ids):
        for h in hours:
            extra = 1 if c % 100 == 0 and h == hours[0] else 0
            drifted += extra
            state.record_meter_event(
                {
                    "event_name": event_name,
                    "payload": {"stripe_customer_id": cus, "value": str(units_of(c) + extra)},
                    "timestamp": str(h + 60),
                    "identifier": f"b{c}-{h}",
                }
            )
    return drifted


async def baseline(reader: StripeReader, meter_id: str, customers: list[str], start: int, end: int) -> float:
    started = time.perf_counter()
    await asyncio.gather(*(reader.period_total(meter_id, cus, start, end) for cus in customers))
    return time.perf_counter() - started


async def change(
    conn: psycopg.AsyncConnection,
    state: EmulatorState,
    tenant: str,
    event_name: str,
    changed: list[int],
    ids: list[str],
    hour: int,
    now: datetime,
) -> None:
    """One more unit counted in ``hour`` for each customer in ``changed``, delivered to Stripe."""
    refs, bucket = [f"c{c}" for c in changed], datetime.fromtimestamp(hour, tz=UTC)
    await conn.execute(
        "UPDATE counters SET total_micros = total_micros + %s, seq = seq + 1, updated_at = %s"
        " WHERE tenant_id = %s AND metric = 'requests' AND customer_ref = ANY(%s) AND bucket = %s",
        (MICROS, now, tenant, refs, bucket),
    )
    await conn.execute(
        "UPDATE stripe_pushes SET latest_micros = latest_micros + %s, latest_seq = latest_seq + 1,"
        " pushed_units = pushed_units + 1, version = version + 1, updated_at = %s"
        " WHERE tenant_id = %s AND metric = 'requests' AND customer_ref = ANY(%s) AND bucket = %s",
        (MICROS, now, tenant, refs, bucket),
    )
    for c in changed:
        state.record_meter_event(
            {
                "event_name": event_name,
                "payload": {"stripe_customer_id": ids[c], "value": "1"},
                "timestamp": str(hour + 120),
                "identifier": f"x{c}-{now.timestamp():.0f}",
            }
        )


async def reconcile_many(
    settings: Settings,
    customers: int,
    hours_per_customer: int,
    say: Say,
    passes: int = 4,
    changed_share: float = 0.01,
) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    tenant = f"bench-rec-{tag}"
    port = free_port()
    state, runner, meter = await emulator_with_meter(port, tag)
    base = f"http://127.0.0.1:{port}"
    hours = bench_hours(int(time.time()), hours_per_customer)
    period = current_name(datetime.fromtimestamp(hours[-1], tz=UTC))
    interval, sweep = settings.reconcile_interval_seconds or 900.0, settings.reconcile_sweep_seconds
    published: list[bytes] = []

    async def publish(records: list[bytes]) -> None:
        published.extend(records)

    http = stripe.AIOHTTPClient(timeout=settings.stripe_timeout_seconds)
    rounds: list[dict[str, Any]] = []
    first: dict[str, Any] = {}  # the first pass's report
    try:
        async with await psycopg.AsyncConnection.connect(
            settings.database_url.value, autocommit=True
        ) as conn:
            say(f"seeding {customers:,} customers x {len(hours)} hours (PostgreSQL and the emulator) ...")
            drifted = await seed(conn, state, tenant, meter["event_name"], customers, hours)
            client = make_client("sk_test_bench", base, http)
            reader = StripeReader(client, StripeBudget(1e9), concurrency=CONCURRENCY)
            customer_ids = [c["id"] for c in state.customers.values()]
            p = period_of(period)
            base_seconds = await baseline(
                reader, meter["id"], customer_ids, int(p.start.timestamp()), int(p.end.timestamp())
            )
            reconciler = Reconciler(
                reader,
                publish,
                ReconcileSettings(
                    epsilon=0.005,
                    settle_seconds=300,
                    sweep_seconds=sweep,
                    interval_seconds=interval,
                    closing_seconds=0,  # the period's end is not what this measures
                ),
            )
            request = RunRequest(tenant, "requests", period, trigger="bench", incremental=True)
            per_change = max(1, round(customers * changed_share))
            start = datetime.now(tz=UTC)
            for n in range(passes + 1):
                # passes start one interval apart on the application's clock, however long each takes
                clock = Clock.starting_at(start + timedelta(seconds=n * interval))
                reconciler.clock = clock
                changed = [(n * per_change + k) % customers for k in range(per_change)] if n else []
                if changed:
                    await change(
                        conn,
                        state,
                        tenant,
                        meter["event_name"],
                        changed,
                        customer_ids,
                        hours[-1],
                        clock.utc(),
                    )
                say(f"pass {n} (clock +{n * interval:,.0f} s, {len(changed):,} customers changed) ...")
                started = time.perf_counter()
                report = await reconciler.run(conn, request)
                seconds = time.perf_counter() - started
                rounds.append(pass_result(n, len(changed), report, seconds))
                say(pass_line(rounds[-1]))
                if n == 0:
                    first = report
            for table in ("reconciliation_runs", "reconciliation_latest", "reconciliation_proofs",
                          "adjustments", "counters", "stripe_pushes", "customer_mappings",
                          "metric_mappings"):  # fmt: skip
                await conn.execute(f"DELETE FROM {table} WHERE tenant_id = %s", (tenant,))
    finally:
        await http.close_async()  # type: ignore[no-untyped-call]  # stripe leaves it unannotated
        await runner.cleanup()
    statuses = {
        s: sum(1 for i in first["items"] if i["status"] == s) for s in ("parity", "within_epsilon", "drift")
    }
    if statuses["within_epsilon"] != drifted or len(first["adjusted"]) != drifted:
        raise RuntimeError(f"expected {drifted} items within epsilon and adjusted, got {statuses}")
    seconds = rounds[0]["seconds"]
    cadence = max(sweep - interval, sweep / 2)
    result = {
        "customers": customers,
        "hours": len(hours),
        "seconds": seconds,
        "itemsPerSecond": round(customers / seconds),
        "stripeCalls": first["stripeCalls"],
        "baselineSeconds": round(base_seconds, 2),
        "ratio": round(base_seconds / seconds, 3),
        "statuses": statuses,
        "sweepShare": round(customers * interval / cadence, 1),
        "passes": rounds,
    }
    say(f"  baseline (bare period-summary calls, concurrency {CONCURRENCY}): {base_seconds:.2f} s")
    say(f"  ratio baseline/first pass: {base_seconds / seconds:.2f}")
    say(
        f"  a pass's share of the sweep: {customers:,} x {interval:.0f} / {cadence:,.0f} ="
        f" {result['sweepShare']:,} items; the rest of what a later pass reads changed"
    )
    return result


def pass_result(n: int, changed: int, report: dict[str, Any], seconds: float) -> dict[str, Any]:
    return {
        "pass": n,
        "changed": changed,
        "itemsRead": len(report["items"]),
        "stripeCalls": report["stripeCalls"],
        "reasons": report.get("reasons", {}),
        "adjusted": len(report["adjusted"]),
        "seconds": round(seconds, 2),
    }


def pass_line(r: dict[str, Any]) -> str:
    reasons = ", ".join(f"{n:,} {why}" for why, n in r["reasons"].items())
    return (
        f"  pass {r['pass']}: {r['itemsRead']:,} items read, {r['stripeCalls']:,} Stripe calls,"
        f" {r['adjusted']} adjusted, {r['seconds']:.2f} s ({reasons})"
    )
