"""`stripemeter bench cycle`: a billing cycle, compressed, end to end, with an oracle.

A real worker and the API (subprocesses) on their own topics, app id, PostgreSQL schema and ports
meter the cycle's traffic (stripemeter/tools/cycle_traffic.py: most of it sent straight to
usage.events, a tenth of the customers through the API) and push it to the Stripe emulator (in this
process, on its own port, on the same clock; stripemeter/tools/cycle_stack.py). The application clock
stands in the month's last hour while the month's usage arrives, then moves across the month end (the
worker and the API restart with the moved clock, as every process of a deployment reads the same
offset at start) for the days after it. The rate follows what the pipeline keeps up with. At each
tenth of the run the sampler (stripemeter/tools/cycle_sampler.py) reads rates, lag, memory, bytes and
Stripe calls. After the traffic the run waits until the counters and Stripe hold all of it, moves the
clock past the invoice grace (the month's period closed) and reconciles every period until every item
is at parity; then the oracle must equal, counter hour by counter hour, both the local totals and
Stripe's.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import stripe
from aiokafka import AIOKafkaProducer

from stripemeter.adapters.kafka.changelog_state import send_records
from stripemeter.adapters.kafka.client_auth import client_kwargs
from stripemeter.adapters.postgres.mappings import MetricMapping, upsert_metric
from stripemeter.adapters.stripe.budget import StripeBudget
from stripemeter.adapters.stripe.client import make_client
from stripemeter.adapters.stripe.reader import StripeReader
from stripemeter.core.push_plan import MAX_AGE_S
from stripemeter.domain.clock import Clock
from stripemeter.domain.config import Secret, Settings
from stripemeter.domain.timefmt import iso_ms
from stripemeter.domain.units import MICROS
from stripemeter.schemas.topics import TopicNames
from stripemeter.services.reconciliation.request import ReconcileSettings, RunRequest
from stripemeter.services.reconciliation.run import Reconciler
from stripemeter.tools.bench import Worker, isolated, process_rss_mib, release
from stripemeter.tools.bench_reconcile import copy_rows
from stripemeter.tools.cycle_sampler import (
    Sample,
    calls_by_kind,
    hours_due,
    lag_by_role,
    table,
    table_bytes,
    topic_bytes,
    tree_bytes,
)
from stripemeter.tools.cycle_stack import ApiProcess, Emulator
from stripemeter.tools.cycle_traffic import HOUR_S, Tally, Tick, Timeline, Traffic
from stripemeter.tools.local.kafka import LocalKafka
from stripemeter.tools.local.procs import free_port

Say = Callable[[str], None]
TICK_S = 0.1
LAG_CHECK_S = 5.0
SLOWER, FASTER = 0.8, 1.2  # the rate's steps while the pipeline lags too far, and while it keeps up
LOWEST_SHARE = 50  # the rate never drops below the shape's rate / this
PARITY_ATTEMPTS = 10


@dataclass(frozen=True)
class CycleShape:
    customers: int = 100_000
    days: int = 35
    minutes: float = 30.0
    rate: int = 3000  # events/s asked for; production pauses while the pipeline lags too far
    partitions: int = 4
    month_end: datetime = datetime(2027, 2, 1, tzinfo=UTC)
    max_lag_seconds: float = 60.0
    calls_per_second: float = 1000.0  # the writer's budget: Stripe's live-mode limit
    drain_minutes: float = 60.0  # after the traffic: how long the counters and Stripe may take


@dataclass
class Run:
    """One run's pieces, as the phases below use them."""

    env: Settings
    names: TopicNames
    shape: CycleShape
    timeline: Timeline
    traffic: Traffic
    emulator: Emulator
    meter: dict[str, Any]
    worker: Worker
    api: ApiProcess
    kafka_data: Path
    say: Say
    logs: Path  # the worker's and the API's logs go here
    started: float = 0.0
    event_time_ms: int = 0
    rate: float = 0.0  # events/s now: the shape's rate, lowered while the pipeline lags

    def start_processes(self, clock: Clock) -> None:
        """The worker and the API, with ``clock``."""
        self.env = self.env.with_overrides(clock_offset_seconds=clock.offset_seconds)
        self.worker = Worker(self.env, self.logs / "worker.log")
        self.api = ApiProcess(self.env, self.logs / "api.log")

    def wait_ready(self) -> None:
        self.worker.wait_ready()
        self.api.wait_live()

    async def stop_processes(self) -> None:
        self.worker.stop()
        await self.api.stop()

    async def sample(self) -> Sample:
        lag, oldest = await lag_by_role(self.env.kafka, self.names)
        rocksdb = await asyncio.to_thread(tree_bytes, self.env.state_dir)
        topics = await asyncio.to_thread(topic_bytes, self.kafka_data, self.names)
        return Sample(
            wall_s=time.perf_counter() - self.started,
            event_time_ms=self.event_time_ms,
            sent=self.traffic.tally.sent,
            lag_messages=lag,
            lag_seconds=oldest,
            rss_mib={
                "worker": process_rss_mib(self.worker.proc.pid),
                "API": process_rss_mib(self.api.proc.pid),
                "bench+emulator": process_rss_mib(os.getpid()),
            },
            rocksdb_bytes=rocksdb,
            topic_bytes=topics,
            table_bytes=await table_bytes(self.env.database_url.value),
            hours_due=await hours_due(self.env.database_url.value),
            stripe_calls=calls_by_kind(self.emulator.state.requests),
        )


async def run_cycle(settings: Settings, shape: CycleShape, say: Say) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    timeline = Timeline.around(shape.month_end, shape.days)
    kafka_data = LocalKafka.from_settings(settings).data_dir
    env, names = await isolated(settings, tag, shape.partitions)
    emulator = Emulator()
    await emulator.start()
    before = Clock.starting_at(datetime.fromtimestamp(timeline.clock_before, tz=UTC))
    emulator.set_clock(before)
    tenant = f"cycle-{tag}"
    env = env.with_overrides(
        stripe_api_base=emulator.base,
        stripe_api_key=Secret("sk_test_cycle"),
        stripe_calls_per_second=shape.calls_per_second,
        reconcile_interval_seconds=0,  # the run reconciles once the cycle is over
        invoice_guard=False,  # no invoices in this account
        clock_offset_seconds=before.offset_seconds,
        api_port=free_port(),
        operator_metrics_port=0,
        auth_enabled=False,
        rate_limit_per_second=1e6,  # one tenant sends the whole cycle
    )
    logs = settings.state_dir / "bench" / f"{tag}-logs"
    logs.mkdir(parents=True, exist_ok=True)
    try:
        say(f"cycle {tag}: {shape.customers:,} customers, event time {timeline.text()}")
        meter = await _seed(env, emulator, tenant, shape.customers, before, say)
        traffic = Traffic(tenant, shape.customers, shape.partitions, env.lateness_seconds * 1000)
        worker, api = Worker(env, logs / "worker.log"), ApiProcess(env, logs / "api.log")
        run = Run(env, names, shape, timeline, traffic, emulator, meter, worker, api, kafka_data, say, logs)
        await asyncio.to_thread(run.wait_ready)
        try:
            samples = await _traffic(run)
            drained = await _drain(run)
            closed = Clock.starting_at(
                datetime.fromtimestamp(timeline.clock_closed(env.invoice_grace_seconds), tz=UTC)
            )
            emulator.set_clock(closed)
            say(f"clock moved to {closed.utc():%Y-%m-%d %H:%M} UTC: the month's period is closed")
            reconciled = await _reconcile(run, closed)
            samples.append(await run.sample())
            verdict = await _oracle_check(run)
        finally:
            await run.stop_processes()
    finally:
        await emulator.stop()
        await release(env)
        shutil.rmtree(env.state_dir, ignore_errors=True)  # the worker's RocksDB tables (logs stay)
    return _report(run, samples, drained, reconciled, verdict)


async def _seed(
    env: Settings, emulator: Emulator, tenant: str, customers: int, clock: Clock, say: Say
) -> dict[str, Any]:
    """The meter and its customers in the emulator, the mappings that tie them to the tenant."""
    event_name = f"cycle_{tenant.rpartition('-')[2]}"
    state = emulator.state
    meter = state.create_meter(
        {"display_name": "requests", "event_name": event_name, "default_aggregation": {"formula": "sum"}}
    )
    say(f"  {customers:,} customers in the emulator and PostgreSQL ...")
    ids = [state.create_customer({"email": f"c{c}@example.com"})["id"] for c in range(customers)]
    async with await psycopg.AsyncConnection.connect(env.database_url.value, autocommit=True) as conn:
        mapping = MetricMapping(tenant, "requests", event_name, "sum", None)
        await upsert_metric(conn, mapping, clock.utc(), env.lateness_seconds)
        await copy_rows(
            conn,
            "COPY customer_mappings (tenant_id, customer_ref, stripe_customer_id) FROM STDIN",
            [(tenant, f"c{c}", cus) for c, cus in enumerate(ids)],
        )
    return meter


async def _traffic(run: Run) -> list[Sample]:
    """Produce the cycle's events for the run's wall time, sampling at each tenth."""
    shape, timeline, say = run.shape, run.timeline, run.say
    duration = shape.minutes * 60
    producer = AIOKafkaProducer(
        **client_kwargs(run.env.kafka), acks="all", linger_ms=10, max_batch_size=1 << 20
    )
    await producer.start()
    run.started = time.perf_counter()
    run.event_time_ms = timeline.event_time_ms(0)
    run.rate = shape.rate / 4  # then up while the pipeline keeps up
    samples = [await run.sample()]
    say(
        f"  traffic: {shape.rate:,} events/s asked for {shape.minutes:g} min; the clock reads "
        f"{Clock(run.env.clock_offset_seconds).utc():%Y-%m-%d %H:%M} UTC"
    )
    watch = asyncio.ensure_future(_watch_lag(run))
    moved = False
    owed = 0.0
    last = time.perf_counter()
    month_end_ms = timeline.month_end * 1000
    next_sample = 1
    try:
        while (elapsed := time.perf_counter() - run.started) < duration:
            now = time.perf_counter()
            owed += (now - last) * run.rate
            last = now
            if not moved and elapsed / duration >= timeline.month_end_fraction:
                await _move_clock(
                    run, Clock.starting_at(datetime.fromtimestamp(timeline.clock_after, tz=UTC))
                )
                moved, last = True, time.perf_counter()
                run.event_time_ms = max(run.event_time_ms, month_end_ms)
            to_ms = timeline.event_time_ms(elapsed / duration)
            to_ms = to_ms if moved else min(to_ms, month_end_ms)
            count = int(owed)
            if count and to_ms > run.event_time_ms:
                owed -= count
                tick = run.traffic.tick(count, run.event_time_ms, to_ms, timeline.span_start * 1000)
                await _send(producer, run.names.events, tick, run.api)
                run.event_time_ms = to_ms
            if elapsed >= next_sample * duration / 10:
                samples.append(await run.sample())
                say(_progress(run, samples[-1], next_sample))
                next_sample += 1
            await asyncio.sleep(TICK_S)
        await producer.flush()
    finally:
        watch.cancel()
        await producer.stop()
    while next_sample <= 10:  # the last tenth ends with the traffic
        samples.append(await run.sample())
        say(_progress(run, samples[-1], next_sample))
        next_sample += 1
    return samples


async def _send(producer: AIOKafkaProducer, topic: str, tick: Tick, api: ApiProcess) -> None:
    futures = []
    for partition, messages in tick.kafka.items():
        for future, _ in await send_records(producer, topic, partition, [(None, m) for m in messages]):
            futures.append(future)
    await asyncio.gather(*futures, api.ingest(tick.api))


async def _watch_lag(run: Run) -> None:
    """The highest rate the pipeline keeps up with: lower while any of its groups (intake, metering,
    sink, Stripe writer) is further behind than the shape allows, or while the writer's hours due
    would take it longer than that at its rate of the last seconds; higher again (up to the shape's
    rate) while all are well inside it."""
    most = float(run.shape.rate)
    pushed, then = len(run.emulator.state.events), time.perf_counter()
    while True:
        await asyncio.sleep(LAG_CHECK_S)
        _, oldest = await lag_by_role(run.env.kafka, run.names)
        due = await hours_due(run.env.database_url.value)
        now, pushed_now = time.perf_counter(), len(run.emulator.state.events)
        push_rate = (pushed_now - pushed) / (now - then)
        pushed, then = pushed_now, now
        behind = max(oldest, due / max(push_rate, 1.0))
        if behind > run.shape.max_lag_seconds:
            run.rate = max(run.rate * SLOWER, most / LOWEST_SHARE)
        elif behind < run.shape.max_lag_seconds / 2:
            run.rate = min(run.rate * FASTER, most)


async def _move_clock(run: Run, clock: Clock) -> None:
    """Across the month end: the worker and the API restart with the moved clock (every process
    reads the offset at start), the emulator moves with them.

    First the writer pushes every hour the moved clock would find too old for Stripe: the compressed
    cycle moves the clock by days at once, where a real one gives the writer those days."""
    started = time.perf_counter()
    oldest_allowed = datetime.fromtimestamp(clock() - MAX_AGE_S + HOUR_S, tz=UTC)
    await _poll(
        "the writer to push the hours the moved clock would find too old",
        lambda: _none_due_before(run, oldest_allowed),
        run.shape.drain_minutes,
        run.say,
    )
    waited = time.perf_counter() - started
    await run.stop_processes()
    run.emulator.set_clock(clock)
    run.start_processes(clock)
    await asyncio.to_thread(run.wait_ready)
    run.say(
        f"  clock moved across the month end to {clock.utc():%Y-%m-%d %H:%M} UTC (waited {waited:.0f} s"
        f" for the writer; worker and API restarted, ready in {time.perf_counter() - started - waited:.1f} s)"
    )


async def _none_due_before(run: Run, oldest_allowed: datetime) -> bool:
    return await hours_due(run.env.database_url.value, before=oldest_allowed) == 0


def _progress(run: Run, s: Sample, tenth: int) -> str:
    """A line per tenth while the run goes on (the table comes at the end)."""
    lag = ", ".join(f"{role} {n:,}" for role, n in sorted(s.lag_messages.items()))
    return (
        f"  {tenth}/10: {s.wall_s:,.0f} s, event time {iso_ms(s.event_time_ms)[:16]}, {s.sent:,} sent, "
        f"lag ({lag} messages, oldest {s.lag_seconds:.0f} s), {s.hours_due:,} hours due to Stripe, "
        f"asking {run.rate:,.0f} events/s, "
        f"worker RSS {s.rss_mib.get('worker', 0):,.0f} MiB"
    )


async def _poll(what: str, check: Callable[[], Awaitable[bool]], minutes: float, say: Say) -> float:
    started = time.perf_counter()
    next_line = started + 30
    while not await check():
        if time.perf_counter() - started > minutes * 60:
            raise RuntimeError(f"{what}: not reached after {minutes:g} minutes")
        if time.perf_counter() > next_line:
            say(f"  waiting for {what} ({time.perf_counter() - started:,.0f} s)")
            next_line += 30
        await asyncio.sleep(1)
    return time.perf_counter() - started


async def _drain(run: Run) -> dict[str, float]:
    """Wait until the counters and then Stripe hold every counted unit."""
    units = run.traffic.tally.units
    tenant, meter_id = run.traffic.tenant, run.meter["id"]

    async def counted() -> bool:
        async with await psycopg.AsyncConnection.connect(run.env.database_url.value) as conn:
            row = await (
                await conn.execute(
                    "SELECT coalesce(sum(total_micros), 0) FROM counters WHERE tenant_id = %s", (tenant,)
                )
            ).fetchone()
        return row is not None and int(row[0]) >= units * MICROS

    async def in_stripe() -> bool:
        return sum(e.value for e in run.emulator.state.meter_events(meter_id)) >= units

    counters_s = await _poll(
        "the counters to hold every counted event", counted, run.shape.drain_minutes, run.say
    )
    stripe_s = await _poll("Stripe to hold every counted unit", in_stripe, run.shape.drain_minutes, run.say)
    run.say(
        f"  after the traffic: counters complete in {counters_s:.0f} s, Stripe {counters_s + stripe_s:.0f} s"
    )
    return {"countersSeconds": counters_s, "stripeSeconds": counters_s + stripe_s}


async def _reconcile(run: Run, clock: Clock) -> dict[str, Any]:
    """Reconcile every period of the cycle until every item is at parity."""
    published: list[bytes] = []

    async def publish(records: list[bytes]) -> None:
        published.extend(records)

    http = stripe.AIOHTTPClient(timeout=run.env.stripe_timeout_seconds)
    reader = StripeReader(
        make_client("sk_test_cycle", run.emulator.base, http), StripeBudget(1e9), concurrency=16
    )
    settings = ReconcileSettings(
        epsilon=run.env.reconcile_epsilon,
        settle_seconds=run.env.reconcile_settle_seconds,
        invoice_grace_seconds=run.env.invoice_grace_seconds,
        app_id=run.env.app_id,
    )
    reconciler = Reconciler(reader, publish, settings, clock)
    try:
        async with await psycopg.AsyncConnection.connect(run.env.database_url.value, autocommit=True) as conn:
            return {p: await _until_parity(run, reconciler, conn, p) for p in run.timeline.periods()}
    finally:
        await http.close_async()  # type: ignore[no-untyped-call]  # stripe leaves it unannotated


async def _until_parity(
    run: Run, reconciler: Reconciler, conn: psycopg.AsyncConnection, period: str
) -> dict[str, Any]:
    """Runs of one period until every item is at parity (none in flight)."""
    for attempt in range(1, PARITY_ATTEMPTS + 1):
        started = time.perf_counter()
        report = await reconciler.run(
            conn, RunRequest(run.traffic.tenant, "requests", period, trigger="bench")
        )
        items = report["items"]
        statuses = Counter(i["status"] for i in items)
        in_flight = sum(1 for i in items if i.get("inFlight"))
        run.say(
            f"  reconcile {period} (run {attempt}): {len(items):,} items {dict(statuses)}, {in_flight} in"
            f" flight, {report['stripeCalls']:,} Stripe reads, {time.perf_counter() - started:.1f} s"
        )
        if set(statuses) <= {"parity"} and not in_flight:
            return {"items": len(items), "runs": attempt, "stripeReads": report["stripeCalls"]}
        await asyncio.sleep(2)
    raise RuntimeError(f"period {period}: not every item at parity after {PARITY_ATTEMPTS} runs")


async def _oracle_check(run: Run) -> dict[str, int]:
    """The oracle against the counters and Stripe, counter hour by counter hour."""
    oracle = run.traffic.oracle_micros()
    async with await psycopg.AsyncConnection.connect(run.env.database_url.value) as conn:
        rows = await (
            await conn.execute(
                "SELECT customer_ref, extract(epoch FROM bucket)::bigint, total_micros FROM counters"
                " WHERE tenant_id = %s AND total_micros <> 0",
                (run.traffic.tenant,),
            )
        ).fetchall()
    local = {(str(c), int(b)): int(t) for c, b, t in rows}
    ref_of = {}
    async with await psycopg.AsyncConnection.connect(run.env.database_url.value) as conn:
        for ref, cus in await (
            await conn.execute(
                "SELECT customer_ref, stripe_customer_id FROM customer_mappings WHERE tenant_id = %s",
                (run.traffic.tenant,),
            )
        ).fetchall():
            ref_of[str(cus)] = str(ref)
    held: Counter[tuple[str, int]] = Counter()
    meter_events = run.emulator.state.meter_events(run.meter["id"])
    for e in meter_events:
        held[(ref_of.get(e.customer, e.customer), e.timestamp - e.timestamp % HOUR_S)] += e.value * MICROS
    stripe_side = {k: v for k, v in held.items() if v}
    verdict = {
        "counterHours": len(oracle),
        "meterEvents": len(meter_events),
        "localDiffering": sum(1 for k in oracle.keys() | local.keys() if oracle.get(k) != local.get(k)),
        "stripeDiffering": sum(
            1 for k in oracle.keys() | stripe_side.keys() if oracle.get(k) != stripe_side.get(k)
        ),
    }
    if verdict["localDiffering"] or verdict["stripeDiffering"]:
        raise RuntimeError(f"the oracle differs: {verdict}")
    run.say(
        f"  oracle: {len(oracle):,} counter hours equal in the counters and in Stripe "
        f"({len(meter_events):,} meter events)"
    )
    return verdict


def _report(
    run: Run,
    samples: list[Sample],
    drained: dict[str, float],
    reconciled: dict[str, Any],
    verdict: dict[str, int],
) -> dict[str, Any]:
    tally: Tally = run.traffic.tally
    say = run.say
    say(
        f"events: {tally.sent:,} sent = {tally.counted:,} counted ({tally.late:,} of them late, in time)"
        f" + {tally.duplicates:,} duplicates + {tally.too_late:,} too late; {tally.units:,} units"
    )
    say(
        f"counter hours: {verdict['counterHours']:,}; Stripe meter events: {verdict['meterEvents']:,} "
        f"({verdict['meterEvents'] / max(verdict['counterHours'], 1):.2f} per counter hour)"
    )
    traffic_s = samples[10].wall_s if len(samples) > 10 else 0.0
    say(f"average {tally.sent / max(traffic_s, 1e-9):,.0f} events/s over {traffic_s:,.0f} s of traffic")
    for line in table(samples, lambda ms: iso_ms(ms)[:13]):
        say(line)
    return {
        "events": tally.sent,
        "counted": tally.counted,
        "duplicates": tally.duplicates,
        "late": tally.late,
        "tooLate": tally.too_late,
        "units": tally.units,
        "trafficSeconds": traffic_s,
        **verdict,
        **drained,
        "reconciled": reconciled,
        "samples": len(samples),
    }
