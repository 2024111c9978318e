"""Benchmark: replay dry-run and apply over a window of the ledger, end to end with a real worker.

Each run has its own PostgreSQL schema, topics, worker (a subprocess, as in production) and Stripe
emulator (a subprocess, no rate limit). The ledger is seeded straight into PostgreSQL (as if the
pipeline had run): ``events`` rows in one window, ``late`` of them too late and the rest counted,
spread over customers and hours; each customer is mapped to an emulator customer. Then the replay
runs as the API runs it (the same producer settings, ``build_replayer``):

- dry-run: the call itself;
- apply: until the call returns, which is once the counters show every correction (the worker's
  meter applied each control message and its sink wrote the counter's new snapshot: read your
  writes), and separately until Stripe (the emulator) holds every too-late event, pushed by the
  worker's writer.

The baseline, in the same run, is one bare aggregate over the same window (count and sum of every
event): the least any recomputation from the ledger has to read.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import psycopg
from aiokafka import AIOKafkaProducer

from stripemeter.adapters.kafka.client_auth import client_kwargs
from stripemeter.adapters.postgres.mappings import MetricMapping, upsert_metric
from stripemeter.core.replay_window import Window
from stripemeter.domain.config import Secret, Settings
from stripemeter.domain.units import MICROS
from stripemeter.services.replayer import ReplayRequest, build_replayer
from stripemeter.tools.bench import Worker, isolated, release
from stripemeter.tools.local.procs import free_port

Say = Callable[[str], None]
HOUR = timedelta(hours=1)
EMULATOR_KEY = "sk_test_bench"
STRIPE_WAIT_SECONDS = 1800.0
SEED_PROGRESS_ROWS = 250_000


async def seed(
    conn: psycopg.AsyncConnection,
    tenant: str,
    events: int,
    late: int,
    customers: int,
    start: datetime,
    say: Say = lambda line: None,
) -> None:
    columns = (
        "source_topic, source_partition, source_offset, source_index, outcome, tenant_id, metric,"
        " customer_ref, quantity_micros, ts, idempotency_key, key_derived"
    )
    async with conn.cursor() as cur, cur.copy(f"COPY events ({columns}) FROM STDIN") as copy:
        for i in range(events):
            if i and i % SEED_PROGRESS_ROWS == 0:
                say(f"  ... {i:,} of {events:,} rows")
            ts = start + (i % 24) * HOUR + timedelta(seconds=i % 3600)
            outcome = "late" if i < late else "counted"
            customer = f"c{i % customers}"
            await copy.write_row(
                ("bench", 0, i, 0, outcome, tenant, "requests", customer, MICROS, ts, f"k{i}", False)
            )
    await conn.execute("ANALYZE events")


async def bare_scan(conn: psycopg.AsyncConnection, tenant: str, window: Window) -> float:
    started = time.perf_counter()
    await conn.execute(
        "SELECT count(*), sum(quantity_micros) FROM events WHERE tenant_id = %s AND metric = 'requests'"
        " AND ts >= %s AND ts < %s",
        (tenant, window.since, window.until),
    )
    return time.perf_counter() - started


class Emulator:
    """``stripemeter stripe-emulator`` as a child process on its own port, without a rate limit."""

    def __init__(self, settings: Settings, port: int):
        self.base = f"http://127.0.0.1:{port}"
        log = settings.state_dir / "stripe-emulator.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(log, "ab")  # noqa: SIM115 - held for the child's lifetime
        argv = [sys.executable, "-m", "stripemeter", "stripe-emulator", "--port", str(port)]
        self.proc = subprocess.Popen(
            [*argv, "--ops-per-second", "0"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.http = aiohttp.ClientSession(headers={"Authorization": f"Bearer {EMULATOR_KEY}"})

    async def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the Stripe emulator exited early; see {self.log.name}")
            try:
                async with self.http.get(self.base + "/_emulator/faults") as answer:
                    if answer.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError("the Stripe emulator was not ready in time")

    async def post(self, path: str, form: dict[str, str]) -> dict[str, Any]:
        async with self.http.post(self.base + path, data=form) as answer:
            answer.raise_for_status()
            body: dict[str, Any] = await answer.json()
            return body

    async def customers(self, count: int, parallel: int = 32) -> list[str]:
        ids: list[str] = [""] * count

        async def make(start: int) -> None:
            for i in range(start, count, parallel):
                ids[i] = (await self.post("/v1/customers", {"email": f"c{i}@example.com"}))["id"]

        await asyncio.gather(*(make(start) for start in range(parallel)))
        return ids

    async def units(self, meter_id: str) -> float:
        """What Stripe holds for the meter: the sum of its meter events."""
        async with self.http.get(f"{self.base}/_emulator/meters/{meter_id}/events") as answer:
            answer.raise_for_status()
            body = await answer.json()
        return float(sum(float(e["payload"]["value"]) for e in body["data"] if not e["cancelled"]))

    async def stop(self) -> None:
        await self.http.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


async def map_customers(
    conn: psycopg.AsyncConnection, settings: Settings, tenant: str, event_name: str, ids: list[str]
) -> None:
    """The metric to the emulator's meter, and customer ``c{i}`` to the emulator's i-th customer."""
    mapping = MetricMapping(tenant, "requests", event_name, "sum", None)
    await upsert_metric(conn, mapping, settings.clock.utc(), settings.lateness_seconds)
    columns = "tenant_id, customer_ref, stripe_customer_id"
    async with conn.cursor() as cur, cur.copy(f"COPY customer_mappings ({columns}) FROM STDIN") as copy:
        for i, stripe_id in enumerate(ids):
            await copy.write_row((tenant, f"c{i}", stripe_id))


def api_producer(settings: Settings) -> AIOKafkaProducer:
    """The replayer's producer as the API builds it (api/app.py)."""
    return AIOKafkaProducer(
        **client_kwargs(settings.kafka),
        acks="all",
        enable_idempotence=True,
        linger_ms=1,
        max_request_size=8 * 1024 * 1024,
        request_timeout_ms=15000,
    )


async def replay_window(
    settings: Settings,
    events: int,
    late: int,
    customers: int,
    partitions: int,
    calls_per_second: float,
    say: Say,
    stage_processes: bool = False,
) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    env, _names = await isolated(settings, tag, partitions)
    port = free_port()
    env = env.with_overrides(
        stripe_api_base=f"http://127.0.0.1:{port}",
        stripe_api_key=Secret(EMULATOR_KEY),
        stripe_calls_per_second=calls_per_second,
        reconcile_interval_seconds=0,
    )
    tenant = f"bench-rp-{tag}"
    start = (datetime.now(UTC) - timedelta(days=3)).replace(minute=0, second=0, microsecond=0)
    window = Window(start, start + 24 * HOUR)
    emulator = Emulator(env, port)
    worker: Worker | None = None
    producer = api_producer(env)
    await producer.start()
    results: dict[str, Any] = {"events": events, "late": late}
    try:
        await emulator.wait_ready()
        event_name = f"bench_{tag}"
        meter = await emulator.post("/v1/billing/meters", {
            "display_name": "requests", "event_name": event_name, "default_aggregation[formula]": "sum",
        })  # fmt: skip
        async with await psycopg.AsyncConnection.connect(env.database_url.value, autocommit=True) as conn:
            say(f"seeding {events:,} ledger rows ({late:,} too late), {customers:,} customers, 24 h ...")
            await map_customers(conn, env, tenant, event_name, await emulator.customers(customers))
            await seed(conn, tenant, events, late, customers, start, say)
            worker = Worker(env, env.state_dir / "worker.log", stage_processes)
            await asyncio.to_thread(worker.wait_ready)
            say(f"worker ready ({partitions} partitions); Stripe writer at {calls_per_second:g} calls/s")
            replayer = build_replayer(env, producer)
            baseline = min([await bare_scan(conn, tenant, window) for _ in range(3)])
            for mode in ("dry-run", "apply"):
                request = ReplayRequest(tenant, ["requests"], None, window, mode)
                started = time.perf_counter()
                report = await replayer.run(conn, request)
                seconds = time.perf_counter() - started
                check(mode, report, events, late)
                results[mode] = seconds
                say(
                    f"  {mode:8} {seconds:6.3f} s{' (counters show every correction)' * (mode == 'apply')}:"
                    f" {events / seconds:,.0f} events scanned/s, {late / seconds:,.0f} too-late events/s,"
                    f" {len(report['counters']):,} counters"
                )
            results["counters"] = len(report["counters"])
            held_at = await until_stripe_holds(emulator, meter["id"], late, started, worker, say)
            results["stripe"] = held_at - started
            say(f"  Stripe holds every too-late event {results['stripe']:.3f} s after the apply began")
            say(f"  baseline (bare count + sum over the window): {baseline:.3f} s;"
                f" ratio baseline/apply {baseline / results['apply']:.2f}")  # fmt: skip
            results["baseline"] = baseline
    finally:
        if worker is not None:
            worker.stop()
        await producer.stop()
        await emulator.stop()
        await release(env)
    return results


def check(mode: str, report: dict[str, Any], events: int, late: int) -> None:
    if report["eventsScanned"] != events or report["eventsReplayed"] != late:
        raise RuntimeError(f"{mode}: scanned {report['eventsScanned']}, replayed {report['eventsReplayed']}")
    if mode == "apply" and not report["visible"]:
        raise RuntimeError(f"apply: {report.get('message', 'the counters do not show the corrections')}")


async def until_stripe_holds(
    emulator: Emulator, meter_id: str, units: int, started: float, worker: Worker, say: Say
) -> float:
    """When Stripe held ``units``, polled every 50 ms (the emulator's listing is cheap); a progress
    line every 10 s."""
    said = time.perf_counter()
    while time.perf_counter() - started < STRIPE_WAIT_SECONDS:
        held = await emulator.units(meter_id)
        if held >= units:
            return time.perf_counter()
        if not worker.alive():
            raise RuntimeError("the worker exited while Stripe did not hold every correction")
        if time.perf_counter() - said >= 10:
            say(f"  ... Stripe holds {held:,.0f} of {units:,} units ({time.perf_counter() - started:.0f} s)")
            said = time.perf_counter()
        await asyncio.sleep(0.05)
    raise RuntimeError(f"Stripe did not hold {units:,} units within {STRIPE_WAIT_SECONDS:.0f} s")
