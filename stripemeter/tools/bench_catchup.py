"""Benchmark: the Stripe writer catching up after an hour-long Stripe outage, against the emulator.

When Stripe comes back, every customer whose usage changed during the outage has a counter hour due
(the same burst as the top of the hour, when every active customer's new hour begins). The run seeds
that state straight into PostgreSQL (its own schema) and the emulator (the customers and one meter):
``customers`` counter hours of the past hour, due and never delivered. Then the real writer runs its
rounds (``StripeWriter.push_due``, without Kafka) until none is due, on each API asked for, with the
configured budgets. Measured: the time to parity (every hour delivered and Stripe holding exactly the
counted units), and the calls Stripe received in each second of real time, counted by the emulator
(the highest, a histogram, 429s). v1 is the baseline: the same writer, budget and machine, one event a
call.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import stripe
from psycopg import sql

from stripemeter.adapters.postgres.migrate import migrate
from stripemeter.adapters.stripe.budget import StripeBudget
from stripemeter.adapters.stripe.client import make_client
from stripemeter.domain import periods
from stripemeter.domain.config import Settings
from stripemeter.domain.kafka_access import KafkaAccess
from stripemeter.streams.stripe_writer import StripeWriter
from stripemeter.tools.bench import emulator_with_meter, with_search_path
from stripemeter.tools.bench_reconcile import copy_rows, map_customers
from stripemeter.tools.local.procs import free_port
from stripemeter.tools.stripe_emulator import EmulatorState
from stripemeter.tools.stripe_emulator.meter_stream import STREAM_PATH

Say = Callable[[str], None]
MICROS = 1_000_000
PROGRESS_SECONDS = 10.0


def units_of(customer: int) -> int:
    """A few heavy customers and a long tail."""
    return 5_000 if customer % 1000 == 0 else 1 + customer % 37


@dataclass(frozen=True)
class Outcome:
    api: str
    customers: int
    seconds: float
    rounds: int
    calls: int
    stream_requests: int
    sessions: int
    max_calls_per_second: int
    max_stream_events_per_second: int
    throttled: int
    histogram: dict[str, int]  # calls received in a second -> how many seconds had that many

    def wire(self) -> dict[str, Any]:
        return {
            "api": self.api, "customers": self.customers, "secondsToParity": round(self.seconds, 2),
            "eventsPerSecond": round(self.customers / self.seconds), "rounds": self.rounds,
            "stripeCalls": self.calls, "streamRequests": self.stream_requests, "sessions": self.sessions,
            "maxCallsPerSecond": self.max_calls_per_second,
            "maxStreamEventsPerSecond": self.max_stream_events_per_second, "throttled": self.throttled,
            "callsPerSecondHistogram": self.histogram,
        }  # fmt: skip


def histogram(per_second: Counter[int], width: int) -> dict[str, int]:
    """Seconds by how many calls they held, in bins of ``width`` calls."""
    bins: Counter[int] = Counter(count // width for count in per_second.values())
    return {f"{b * width}-{(b + 1) * width - 1}": n for b, n in sorted(bins.items())}


async def seed(
    conn: psycopg.AsyncConnection, state: EmulatorState, app_id: str, tenant: str, event_name: str,
    customers: int, hour: datetime,
) -> None:  # fmt: skip
    """The outage's end: one due, never delivered counter hour per customer (partition 0)."""
    await map_customers(conn, state, tenant, event_name, customers)
    period = periods.holding(hour, None).start
    await copy_rows(
        conn,
        "COPY stripe_pushes (tenant_id, metric, customer_ref, bucket, latest_micros, latest_seq, app_id,"
        " delta_partition, period_start, updated_at) FROM STDIN",
        [
            (tenant, "requests", f"c{c}", hour, units_of(c) * MICROS, 1, app_id, 0, period, hour)
            for c in range(customers)
        ],
    )


async def catch_up(
    database_url: str, api: str, customers: int, calls_per_second: float, events_per_second: float,
    timeout: float, say: Say,
) -> Outcome:  # fmt: skip
    tag = uuid.uuid4().hex[:6]
    app_id, tenant = f"bench-catchup-{tag}", f"catchup-{tag}"
    port = free_port()
    state, runner, meter = await emulator_with_meter(port, tag)
    state.faults.update({"stream_events_per_second": events_per_second})
    http = stripe.AIOHTTPClient(timeout=10.0)
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    try:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            say(f"[{api}] seeding {customers:,} due counter hours (PostgreSQL and the emulator) ...")
            await seed(conn, state, app_id, tenant, meter["event_name"], customers, hour)
            client = make_client("sk_test_bench", f"http://127.0.0.1:{port}", http)
            writer = StripeWriter(
                KafkaAccess("unused:9092"), "unused", "unused", app_id, database_url, client,
                StripeBudget(calls_per_second), api=api, stream_events_per_second=events_per_second,
            )  # fmt: skip
            writer.ownership.unclaimed = {0}
            say(f"[{api}] Stripe is back: catching up at {calls_per_second:g} calls/s ...")
            state.calls_by_second.clear()
            started = last_said = time.perf_counter()
            delivered = rounds = 0
            while delivered < customers:
                delivered += await writer.push_due(conn)
                rounds += 1
                now = time.perf_counter()
                if now - started > timeout:
                    raise RuntimeError(f"[{api}] no parity after {timeout:.0f} s ({delivered:,} delivered)")
                if now - last_said >= PROGRESS_SECONDS:
                    last_said = now
                    say(f"[{api}]   {delivered:,}/{customers:,} delivered after {now - started:.0f} s")
            seconds = time.perf_counter() - started
            held: Counter[str] = Counter()
            for event in state.meter_events(meter["id"]):
                held[event.customer] += event.value
            ids = [c["id"] for c in state.customers.values()]
            wrong = sum(1 for c, cus in enumerate(ids) if held[cus] != units_of(c))
            if wrong or len(state.meter_events(meter["id"])) != customers:
                raise RuntimeError(f"[{api}] not at parity: {wrong} customers differ")
    finally:
        await http.close_async()  # type: ignore[no-untyped-call]  # stripe leaves it unannotated
        await runner.cleanup()
    per_second = state.calls_by_second
    outcome = Outcome(
        api, customers, seconds, rounds, sum(per_second.values()), state.requests[f"POST {STREAM_PATH}"],
        state.requests["POST /v2/billing/meter_event_session"], max(per_second.values()),
        max(state.stream_limit.events.values(), default=0), sum(state.throttled_by_second.values()),
        histogram(per_second, max(1, int(calls_per_second) // 10)),
    )  # fmt: skip
    say(
        f"[{api}] parity: {customers:,} counter hours in {seconds:.1f} s ({customers / seconds:,.0f}/s),"
        f" {outcome.calls:,} Stripe calls, at most {outcome.max_calls_per_second} in one second (budget"
        f" {calls_per_second:g}), {outcome.throttled} answered 429"
    )
    if api != "v1":
        say(
            f"[{api}]   {outcome.stream_requests:,} stream requests, {outcome.sessions} session(s), at most"
            f" {outcome.max_stream_events_per_second:,} events in one second (budget {events_per_second:g})"
        )
    say(f"[{api}]   seconds by calls received: {outcome.histogram}")
    return outcome


async def catchup(
    settings: Settings, customers: int, apis: list[str], calls_per_second: float, events_per_second: float,
    timeout: float, say: Say,
) -> dict[str, Any]:  # fmt: skip
    """Each API in ``apis`` in turn, in a PostgreSQL schema of the run's own (dropped after)."""
    schema = f"bench_catchup_{uuid.uuid4().hex[:6]}"
    async with await psycopg.AsyncConnection.connect(settings.database_url.value, autocommit=True) as conn:
        await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    url = with_search_path(settings.database_url.value, schema)
    try:
        await asyncio.to_thread(migrate, url)
        outcomes = [
            await catch_up(url, api, customers, calls_per_second, events_per_second, timeout, say)
            for api in apis
        ]
    finally:
        async with await psycopg.AsyncConnection.connect(
            settings.database_url.value, autocommit=True
        ) as conn:
            await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    result: dict[str, Any] = {"runs": [o.wire() for o in outcomes]}
    if len(outcomes) > 1 and outcomes[0].api == "v1":
        for o in outcomes[1:]:
            result[f"ratio_v1_over_{o.api}"] = round(outcomes[0].seconds / o.seconds, 2)
            say(f"time to parity, v1 / {o.api}: {outcomes[0].seconds / o.seconds:.2f}")
    return result
