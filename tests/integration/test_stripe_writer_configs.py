"""Every configuration the writer accepts bills right in Stripe, from the moment it is accepted.

The writer runs in this process against PostgreSQL, Kafka and the emulator (as strict as Stripe: of two
`last` events with one timestamp the earlier received wins), on a clock the test sets: a `last` value
that drops to 0 and changes twice in a second, counters whose deltas are gone from usage.deltas, a
meter fixed in Stripe a moment ago, a stream spread over two partitions, and refusals that pass later.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import psycopg
import pytest_asyncio
import stripe
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import TopicPartition

from stripemeter.adapters.postgres import push_totals
from stripemeter.adapters.postgres.push_totals import Latest
from stripemeter.adapters.stripe.budget import StripeBudget
from stripemeter.adapters.stripe.client import make_client
from stripemeter.api.app import create_app as create_api
from stripemeter.domain import periods
from stripemeter.domain.clock import Clock
from stripemeter.domain.config import Settings
from stripemeter.domain.kafka_access import KafkaAccess
from stripemeter.schemas.deltas import Delta, encode_delta
from stripemeter.schemas.topics import TopicNames
from stripemeter.streams.sink import PostgresSink
from stripemeter.streams.stripe_writer import StripeWriter
from stripemeter.tools.stripe_emulator import EmulatorState, create_app
from tests.integration.client import eventually
from tests.integration.harness import free_port
from tests.integration.stripe_helpers import emulator_settings

HOUR = 3600
T0 = datetime(2026, 11, 20, 15, 30, tzinfo=UTC)  # where the tests live (the writer's and Stripe's now)


class Record(NamedTuple):
    """What the sink reads from a ConsumerRecord."""

    topic: str
    partition: int
    offset: int
    value: bytes


@dataclass(frozen=True)
class SetClock(Clock):
    """A clock that reads what the test sets (``at[0]``, unix seconds)."""

    at: list[float] = field(default_factory=lambda: [T0.timestamp()])

    def __call__(self) -> float:
        return self.at[0]

    def advance(self, seconds: float) -> None:
        self.at[0] += seconds


@dataclass
class Setup:
    state: EmulatorState
    base: str
    clock: SetClock
    tenant: str
    app: str
    conn: psycopg.AsyncConnection
    settings: Settings
    customer: str = ""
    meter: str = ""
    event_name: str = ""

    def writer(self) -> StripeWriter:
        names = TopicNames(self.settings.topic_prefix, self.settings.app_id)
        return StripeWriter(
            self.settings.kafka, names.deltas, f"{self.app}-stripe-writer", self.app,
            self.settings.database_url.value, make_client("sk_test_emulator", self.base), StripeBudget(1000),
            flush_interval=0.05, clock=self.clock,
        )  # fmt: skip

    async def holding(self, writer: StripeWriter, *partitions: int) -> StripeWriter:
        topic = TopicNames(self.settings.topic_prefix, self.settings.app_id).deltas
        await writer.ownership.on_partitions_assigned([TopicPartition(topic, p) for p in partitions])
        return writer

    async def mapped(self, metric: str, formula: str, aggregation: str) -> None:
        """A meter, a customer, and the mappings that tie the tenant's metric and customer `c` to them."""
        self.event_name = f"{metric}_{uuid.uuid4().hex[:8]}"
        self.meter = self.state.create_meter(
            {
                "display_name": metric,
                "event_name": self.event_name,
                "default_aggregation": {"formula": formula},
            }
        )["id"]
        self.customer = self.state.create_customer({"email": "c@example.com"})["id"]
        await self.conn.execute(
            "INSERT INTO metric_mappings (tenant_id, metric, stripe_meter_event_name, aggregation)"
            " VALUES (%s, %s, %s, %s)",
            (self.tenant, metric, self.event_name, aggregation),
        )
        await self.conn.execute(
            "INSERT INTO customer_mappings (tenant_id, customer_ref, stripe_customer_id)"
            " VALUES (%s, 'c', %s)",
            (self.tenant, self.customer),
        )

    async def count(self, metric: str, bucket: datetime, micros: int, seq: int, partition: int = 0) -> None:
        """What the writer records when it reads the counter's delta."""
        start = periods.holding(bucket).start
        latest = Latest(self.tenant, metric, "c", bucket, micros, seq, self.app, partition, start)
        await push_totals.record_latest(self.conn, [latest], self.clock.utc())

    async def hours(self, start: datetime, end: datetime) -> dict[int, float]:
        """Stripe's own view through the real client: the meter's hour summaries."""
        return await asyncio.to_thread(self._hours, start, end)

    async def period(self, start: datetime, end: datetime) -> float | None:
        """The meter's summary of ``[start, end)``: what an invoice of that period bills."""
        return await asyncio.to_thread(self._period, start, end)

    def _hours(self, start: datetime, end: datetime) -> dict[int, float]:
        client = stripe.StripeClient("sk_test_emulator", base_addresses={"api": self.base})
        params: Any = {
            "customer": self.customer, "start_time": int(start.timestamp()), "end_time": int(end.timestamp()),
            "value_grouping_window": "hour",
        }  # fmt: skip
        page = client.v1.billing.meters.event_summaries.list(self.meter, params)
        return {int(s.start_time): float(s.aggregated_value) for s in page.auto_paging_iter()}

    def _period(self, start: datetime, end: datetime) -> float | None:
        client = stripe.StripeClient("sk_test_emulator", base_addresses={"api": self.base})
        params: Any = {
            "customer": self.customer,
            "start_time": int(start.timestamp()),
            "end_time": int(end.timestamp()),
        }
        page = client.v1.billing.meters.event_summaries.list(self.meter, params)
        return float(page.data[0].aggregated_value) if page.data else None


@pytest_asyncio.fixture
async def setup(env: Settings) -> AsyncIterator[Setup]:
    clock = SetClock()
    state = EmulatorState(clock, ops_per_second=0)  # Stripe's clock is the writer's (until a test moves it)
    server = TestServer(create_app(state), host="127.0.0.1", port=free_port())
    await server.start_server()
    tenant = f"cf-{uuid.uuid4().hex[:6]}"
    async with await psycopg.AsyncConnection.connect(env.database_url.value, autocommit=True) as conn:
        yield Setup(state, str(server.make_url("")).rstrip("/"), clock, tenant, env.app_id, conn, env)
    await server.close()


async def test_a_last_value_ends_in_stripe_as_counted_down_to_0(setup: Setup) -> None:
    """Seats 10 in one hour, 0 in the next: Stripe's period ends at 0. Then the next hour changes twice
    within one second of the clock: Stripe holds the newer value (the emulator breaks timestamp ties
    for the earlier received)."""
    s = setup
    await s.mapped("seats", "last", "last")
    writer = await s.holding(s.writer(), 0)
    h1 = T0.replace(minute=0) - timedelta(hours=2)
    h2, h3 = h1 + timedelta(hours=1), h1 + timedelta(hours=2)
    await s.count("seats", h1, 10_000_000, 1)
    await writer.push_due(s.conn)
    await s.count("seats", h2, 0, 1)
    await writer.push_due(s.conn)
    assert await s.hours(h1, h3) == {int(h1.timestamp()): 10.0, int(h2.timestamp()): 0.0}
    assert await s.period(h1, h3) == 0.0  # what the invoice bills: the newest event's value
    for seq, seats in [(1, 4), (2, 7), (3, 2)]:  # three changes, all in the same second
        await s.count("seats", h3, seats * 1_000_000, seq)
        await writer.push_due(s.conn)
    assert await s.hours(h3, h3 + timedelta(hours=1)) == {int(h3.timestamp()): 2.0}
    assert await s.period(h1, h3 + timedelta(hours=1)) == 2.0
    stamps = [e.timestamp - int(h3.timestamp()) for e in s.state.meter_events(s.meter)][2:]
    assert stamps == [0, 1, 2]


async def test_counters_whose_deltas_are_gone_reach_stripe(setup: Setup) -> None:
    """Usage counted while no writer ran: the sink wrote the counters (with its app), usage.deltas has
    nothing left of them. The writer, started now, pushes them all; Stripe equals the counters."""
    s = setup
    await s.mapped("requests", "sum", "sum")
    names = TopicNames(s.settings.topic_prefix, s.app)
    hour0 = int(T0.timestamp()) // HOUR * HOUR
    # 9, 7.5, 6, 4.5 and 3 units in the five hours before this one: in whole units, fractions carried
    deltas = [
        Delta(s.tenant, "requests", "c", (hour0 - h * HOUR) * 1000, (h + 1) * 1_500_000, 3)
        for h in range(5, 0, -1)
    ]
    expected = {hour0 - h * HOUR: units for h, units in zip(range(5, 0, -1), [9, 7, 6, 5, 3], strict=True)}
    sink = PostgresSink(KafkaAccess("unused:9092"), names, "unused", s.settings.database_url.value)
    await sink.prepare(s.conn)
    await sink._write(s.conn, [Record(names.deltas, 0, i, encode_delta(d)) for i, d in enumerate(deltas)])
    writer = s.writer()
    task = asyncio.create_task(writer.run())

    async def in_stripe() -> bool:
        totals: dict[int, int] = {}
        for e in s.state.meter_events(s.meter):
            totals[e.timestamp] = totals.get(e.timestamp, 0) + e.value
        return totals == expected

    try:
        await eventually(in_stripe, timeout=60, what="the counters in Stripe")
    finally:
        writer.stop()
        await asyncio.wait_for(task, 30)


async def test_a_meter_fixed_in_stripe_a_moment_ago_is_seen_at_once(setup: Setup) -> None:
    """The writer parks a counter of an inactive meter; the operator reactivates it and saves the
    mapping again (which unparks the counter): the writer pushes it, within the minute its catalog
    keeps meters, instead of parking it again from its copy."""
    s = setup
    await s.mapped("requests", "sum", "sum")
    s.state.set_meter_status(s.meter, "inactive")
    writer = await s.holding(s.writer(), 0)
    now = [1000.0]
    writer.meters.monotonic = lambda: now[0]
    await s.count("requests", T0.replace(minute=0) - timedelta(hours=1), 5_000_000, 1)
    await writer.push_due(s.conn)
    [(status, reason)] = await (
        await s.conn.execute("SELECT status, reason FROM stripe_pushes WHERE tenant_id = %s", (s.tenant,))
    ).fetchall()
    assert status == "parked" and "inactive" in reason
    s.state.set_meter_status(s.meter, "active")
    api = TestClient(TestServer(create_api(s.settings.with_overrides(**emulator_settings(s.base)))))
    await api.start_server()
    try:
        put = await api.put(
            f"/v1/mappings/{s.tenant}/requests",
            json={"stripeMeterEventName": s.event_name, "aggregation": "sum"},
        )
        assert put.status == 200 and (await put.json())["countersRetried"] == 1
    finally:
        await api.close()
    now[0] += 2.0  # a moment later: the catalog read before the fix is two seconds old
    assert await writer.push_due(s.conn) == 1
    assert [e.value for e in s.state.meter_events(s.meter)] == [5]


async def test_a_stream_over_two_partitions_does_not_stall_and_converges(setup: Setup) -> None:
    """The stream's older hour is in partition 1 (usage.deltas gained partitions; another writer holds
    it), its newer hour in partition 0, held here: the newer hour is pushed at once. The stream's next
    delta arrives in partition 0 and the older hour follows it: then it is pushed here too."""
    s = setup
    await s.mapped("requests", "sum", "sum")
    writer = await s.holding(s.writer(), 0)
    older, newer = T0.replace(minute=0) - timedelta(hours=2), T0.replace(minute=0) - timedelta(hours=1)
    await s.count("requests", older, 3_000_000, 1, partition=1)
    await s.count("requests", newer, 4_000_000, 1, partition=1)
    # the newer hour's first delta from partition 0 was recorded, the rest of the stream not moved yet
    await s.conn.execute(
        "UPDATE stripe_pushes SET delta_partition = 0 WHERE tenant_id = %s AND bucket = %s", (s.tenant, newer)
    )
    assert await writer.push_due(s.conn) == 1
    assert [(e.timestamp, e.value) for e in s.state.meter_events(s.meter)] == [(int(newer.timestamp()), 4)]
    await s.count("requests", newer, 6_000_000, 2, partition=0)
    assert await writer.push_due(s.conn) == 2
    totals: dict[int, int] = {}
    for e in s.state.meter_events(s.meter):
        totals[e.timestamp] = totals.get(e.timestamp, 0) + e.value
    assert totals == {int(older.timestamp()): 3, int(newer.timestamp()): 6}


async def test_refusals_that_pass_later_are_sent_again_not_parked(setup: Setup) -> None:
    """Stripe's clock runs 200 s behind the writer's: an hour that begins two minutes from now (events
    may be an hour ahead) is refused as in the future, for now. Then a lock timeout. Neither parks the
    counter: once Stripe's clock has caught up, the same request lands."""
    s = setup
    await s.mapped("requests", "sum", "sum")
    writer = await s.holding(s.writer(), 0)
    s.clock.at[0] = T0.replace(minute=58).timestamp()
    s.state.clock_offset = -200.0
    ahead = T0.replace(minute=0) + timedelta(hours=1)
    await s.count("requests", ahead, 5_000_000, 1)
    assert await writer.push_due(s.conn) == 0
    [(status, reason)] = await (
        await s.conn.execute("SELECT status, reason FROM stripe_pushes WHERE tenant_id = %s", (s.tenant,))
    ).fetchall()
    assert status == "pending" and "future" in reason  # not parked: sent again later
    [(refused_since,)] = await (
        await s.conn.execute("SELECT refused_since FROM stripe_pushes WHERE tenant_id = %s", (s.tenant,))
    ).fetchall()
    assert refused_since is not None  # the first refusal is remembered: an hour of them parks it
    s.state.faults.update({"lock_timeouts": 1, "path_prefix": "/v1/billing/meter_events"})
    s.clock.advance(5)  # past the retry's backoff
    assert await writer.push_due(s.conn) == 0  # a lock timeout
    s.clock.advance(5)
    assert await writer.push_due(s.conn) == 0  # Stripe's clock still runs behind: in the future again
    s.state.clock_offset = 0.0  # it caught up
    s.clock.advance(5)
    assert await writer.push_due(s.conn) == 1
    assert [(e.timestamp, e.value) for e in s.state.meter_events(s.meter)] == [(int(ahead.timestamp()), 5)]
    [(status, refused_since)] = await (
        await s.conn.execute(
            "SELECT status, refused_since FROM stripe_pushes WHERE tenant_id = %s", (s.tenant,)
        )
    ).fetchall()
    assert (status, refused_since) == ("synced", None)
