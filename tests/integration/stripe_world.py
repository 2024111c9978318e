"""One manual clock for the Stripe emulator, the Stripe writer and the reconciler, all in this process:
tests move time (Stripe's summary lag, the settle time, the lag cap) instead of waiting for it. The
writer is the real one (streams/stripe_writer.py) without Kafka: the test records each counter's
newest total as the writer's consumer would, and runs the writer's rounds itself."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest_asyncio
import stripe
from aiohttp.test_utils import TestServer
from psycopg.rows import dict_row

from stripemeter.adapters.postgres import push_totals
from stripemeter.adapters.postgres.push_totals import Latest
from stripemeter.adapters.stripe.budget import StripeBudget
from stripemeter.adapters.stripe.client import make_client
from stripemeter.adapters.stripe.reader import StripeReader
from stripemeter.domain import periods
from stripemeter.domain.config import Settings
from stripemeter.domain.kafka_access import KafkaAccess
from stripemeter.services.reconciliation.request import ReconcileSettings, RunRequest
from stripemeter.services.reconciliation.run import Reconciler
from stripemeter.streams.stripe_writer import StripeWriter
from stripemeter.tools.stripe_emulator import EmulatorState, create_app
from stripemeter.tools.stripe_emulator.manual_clock import ManualClock
from tests.integration.harness import free_port

START = datetime(2026, 12, 10, 12, tzinfo=UTC)
PERIOD = "2026-12"
MICROS = 1_000_000


class AppClock(ManualClock):
    """The application's clock (``Clock``'s interface), moved by hand."""

    def utc(self) -> datetime:
        return datetime.fromtimestamp(self.now, tz=UTC)

    def ms(self) -> int:
        return int(self.now * 1000)


async def no_publish(records: list[bytes]) -> None:
    return None


@dataclass
class World:
    state: EmulatorState
    clock: AppClock
    conn: psycopg.AsyncConnection
    writer: StripeWriter
    reconciler: Reconciler
    tenant: str
    app_id: str
    base: str  # the emulator's address
    seqs: dict[tuple[str, str, datetime], int] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)  # customer ref -> Stripe customer id

    def settle(self, seconds: float, lag_cap: float | None = None) -> None:
        """The reconciler's configured settle time (and lag cap)."""
        cap = self.reconciler.settings.lag_cap_seconds if lag_cap is None else lag_cap
        self.reconciler.settings = replace(
            self.reconciler.settings, settle_seconds=seconds, lag_cap_seconds=cap
        )

    def meter(self, metric: str, formula: str = "sum") -> str:
        event_name = f"{metric}_{uuid.uuid4().hex[:8]}"
        self.state.create_meter(
            {"display_name": metric, "event_name": event_name, "default_aggregation": {"formula": formula}}
        )
        return event_name

    async def map_metric(
        self, metric: str, event_name: str, aggregation: str = "sum", tenant: str = ""
    ) -> None:
        await self.conn.execute(
            "INSERT INTO metric_mappings (tenant_id, metric, stripe_meter_event_name, aggregation)"
            " VALUES (%s, %s, %s, %s)",
            (tenant or self.tenant, metric, event_name, aggregation),
        )

    async def map_customer(self, customer: str, stripe_id: str | None = None, tenant: str = "") -> str:
        if stripe_id is None:
            stripe_id = (
                self.ids.get(customer) or self.state.create_customer({"email": f"{customer}@x.test"})["id"]
            )
        self.ids.setdefault(customer, stripe_id)
        await self.conn.execute(
            "INSERT INTO customer_mappings (tenant_id, customer_ref, stripe_customer_id) VALUES (%s, %s, %s)",
            (tenant or self.tenant, customer, stripe_id),
        )
        return stripe_id

    async def count(
        self, metric: str, customer: str, bucket: datetime, units: float, tenant: str = ""
    ) -> None:
        """The counter's newest total, as usage.deltas brings it to the writer."""
        tenant = tenant or self.tenant
        key = (tenant, metric, customer, bucket)
        seq = self.seqs[key[1:]] = self.seqs.get(key[1:], 0) + 1
        total = round(units * MICROS)
        period = periods.holding(bucket, None).start
        latest = Latest(tenant, metric, customer, bucket, total, seq, self.app_id, 0, period)
        await push_totals.record_latest(self.conn, [latest], self.clock.utc())
        await self.conn.execute(
            "INSERT INTO counters (tenant_id, metric, customer_ref, bucket, total_micros, seq, updated_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (tenant_id, metric, customer_ref, bucket)"
            " DO UPDATE SET total_micros = EXCLUDED.total_micros, seq = EXCLUDED.seq,"
            " updated_at = EXCLUDED.updated_at",
            (tenant, metric, customer, bucket, total, seq, self.clock.utc()),
        )

    def meter_event(self, customer: str, value: int, bucket: datetime) -> None:
        """A meter event nobody in stripemeter sent (a foreign or duplicated push), to the first meter."""
        event_name = next(iter(self.state.meters.values()))["event_name"]
        self.state.record_meter_event(
            {"event_name": event_name, "timestamp": str(int(bucket.timestamp()) + 60),
             "payload": {"stripe_customer_id": self.ids[customer], "value": str(value)},
             "identifier": f"foreign-{uuid.uuid4().hex[:8]}"}
        )  # fmt: skip

    async def push(self) -> int:
        """One round of the writer."""
        return await self.writer.push_due(self.conn)

    async def reconcile(self, metric: str | None = None) -> dict[str, Any]:
        return await self.reconciler.run(self.conn, RunRequest(self.tenant, metric, PERIOD, trigger="test"))

    def held(self, customer: str) -> int:
        """What Stripe holds for the customer over all meters, every accepted event counted."""
        events = (e for meter in self.state.meters for e in self.state.meter_events(meter))
        return sum(e.value for e in events if e.customer == self.ids[customer])

    def corrections_sent(self, customer: str) -> list[int]:
        events = (e for meter in self.state.meters for e in self.state.meter_events(meter))
        return [
            e.value for e in events if e.customer == self.ids[customer] and e.identifier.startswith("smrec_")
        ]

    async def rows(self, query: str, *params: Any) -> list[dict[str, Any]]:
        cur = self.conn.cursor(row_factory=dict_row)
        await cur.execute(query, params)
        return await cur.fetchall()


@pytest_asyncio.fixture
async def world(env: Settings) -> AsyncIterator[World]:
    clock = AppClock(START.timestamp())
    state = EmulatorState(clock, ops_per_second=0)
    server = TestServer(create_app(state), host="127.0.0.1", port=free_port())
    await server.start_server()
    base = str(server.make_url("")).rstrip("/")
    tenant = f"w-{uuid.uuid4().hex[:6]}"
    app_id = f"app-{tenant}"
    http = [stripe.AIOHTTPClient(), stripe.AIOHTTPClient()]
    writer_client, reader_client = (make_client("sk_test_world", base, h) for h in http)
    budget = StripeBudget(1000)
    writer = StripeWriter(
        KafkaAccess("unused:9092"), "usage.deltas", "group", app_id, env.database_url.value, writer_client,
        budget,
        clock=clock,  # type: ignore[arg-type]
    )  # fmt: skip
    writer.ownership.unclaimed = {0}
    reconciler = Reconciler(
        StripeReader(reader_client, budget),
        no_publish,
        ReconcileSettings(settle_seconds=10.0, app_id=app_id),
        clock,  # type: ignore[arg-type]
    )
    async with await psycopg.AsyncConnection.connect(env.database_url.value, autocommit=True) as conn:
        yield World(state, clock, conn, writer, reconciler, tenant, app_id, base)
    for h in http:
        await h.close_async()  # type: ignore[no-untyped-call]  # stripe leaves it unannotated
    await server.close()
