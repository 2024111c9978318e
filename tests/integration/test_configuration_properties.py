"""Random sequences of mapping changes interleaved with usage, through the real pipeline: every sequence
ends with Stripe equal to an oracle, or with refusals that name the field (issue 26).

Each example is one tenant: two metrics, three customers, two Stripe `sum` meters and one `last` meter,
three Stripe customers. Its steps create, change (aggregation, meter), share (a second metric on a meter
event name, a second customerRef on a Stripe customer), remap and delete mappings, with or without
re-aggregation; send events, duplicates of counted events and too-late events (60 h behind a stream's
watermark); and kill -9 the worker once. A refused change must name a field and change nothing; an
accepted one changes the model. At the end every stream with usage is mapped again (its last meter and
customer, or any free one), and then, per (meter, Stripe customer) pair, Stripe's hours must hold what
the stream mapped there counted, folded under its metric's final aggregation, and a pair no stream maps
to must hold nothing. A reconciliation run of each metric then finds nothing to correct.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from stripemeter.api.app import create_app as create_api
from stripemeter.domain.config import Settings
from stripemeter.domain.units import MICROS, floor_units, round_units
from stripemeter.tools.stripe_emulator import EmulatorState
from stripemeter.tools.stripe_emulator import create_app as create_emulator
from stripemeter.tools.stripe_emulator.summaries import aggregate
from tests.integration.client import eventually, produce
from tests.integration.harness import ApiClient, WorkerProcess, free_port
from tests.integration.stripe_helpers import emulator_settings

METRICS = ("m1", "m2")
CUSTOMERS = ("c1", "c2", "c3")
METERS = {"s1": "sum", "s2": "sum", "l1": "last"}  # meter key -> formula
STRIPE_CUSTOMERS = ("k1", "k2", "k3")
HOUR_S = 3600

Step = tuple[Any, ...]
metric_put = st.tuples(
    st.just("metric"),
    st.sampled_from(METRICS),
    st.sampled_from(sorted(METERS)),
    st.sampled_from(("sum", "count", "last")),
    st.sampled_from((None, "apply")),
)
metric_delete = st.tuples(st.just("delete_metric"), st.sampled_from(METRICS), st.booleans())
customer_put = st.tuples(st.just("customer"), st.sampled_from(CUSTOMERS), st.sampled_from(STRIPE_CUSTOMERS))
customer_delete = st.tuples(st.just("delete_customer"), st.sampled_from(CUSTOMERS))
usage = st.tuples(
    st.just("events"),
    st.lists(
        st.tuples(
            st.sampled_from(METRICS),
            st.sampled_from(CUSTOMERS),
            st.integers(0, 5),
            st.sampled_from(("new", "new", "new", "duplicate", "late")),
        ),
        min_size=1,
        max_size=12,
    ),
)
STEPS = st.lists(
    st.one_of(
        metric_put, metric_put, metric_delete, customer_put, customer_put, customer_delete, usage, usage
    ),
    min_size=6,
    max_size=14,
)


@dataclass
class Counted:
    key: str
    quantity: int
    ts: int  # unix seconds


@dataclass
class Model:
    """What the tenant's mappings are, and what each stream counted (the oracle)."""

    tenant: str
    metrics: dict[str, tuple[str, str]] = field(default_factory=dict)  # metric -> (meter key, aggregation)
    customers: dict[str, str] = field(default_factory=dict)  # customerRef -> Stripe customer key
    counted: dict[tuple[str, str], list[Counted]] = field(default_factory=lambda: defaultdict(list))
    last_meter: dict[str, str] = field(default_factory=dict)  # metric -> meter key it was last mapped to
    last_customer: dict[str, str] = field(default_factory=dict)
    sent: int = 0  # events produced (each ends up in the ledger)
    refusals: list[str] = field(default_factory=list)

    def aggregation(self, metric: str) -> str:
        return self.metrics[metric][1] if metric in self.metrics else "sum"


class World:
    """The example's tenant, Stripe objects and clients."""

    def __init__(self, env: Settings, state: EmulatorState, api: ApiClient, worker: WorkerProcess):
        self.env, self.state, self.api, self.worker = env, state, api, worker
        tag = uuid.uuid4().hex[:8]
        self.model = Model(f"cp-{tag}")
        self.event_names = {k: f"{k}_{tag}" for k in METERS}
        self.meter_ids = {}
        for key, formula in METERS.items():
            meter = state.create_meter(
                {
                    "display_name": key,
                    "event_name": self.event_names[key],
                    "default_aggregation": {"formula": formula},
                }
            )
            self.meter_ids[key] = meter["id"]
        self.stripe_ids = {
            k: state.create_customer({"email": f"{k}@{tag}.example"})["id"] for k in STRIPE_CUSTOMERS
        }
        self.clock = int(time.time()) - 600  # event times: distinct seconds, ten minutes back and on

    async def apply(self, step: Step) -> None:
        kind = step[0]
        if kind == "events":
            await self.events(step[1])
            return
        response, body = await self.call(step)
        model = self.model
        if response >= 400:
            assert response in (404, 409, 422), (step, response, body)
            if response != 404:
                assert body["error"].get("field"), (step, body)  # a refusal names the field
            model.refusals.append(f"{step}: {response} {body['error'].get('field')}")
            return
        assert response == 200, (step, response, body)
        if kind == "metric":
            _, metric, meter, aggregation, _ = step
            model.metrics[metric] = (meter, aggregation)
            model.last_meter[metric] = meter
        elif kind == "delete_metric":
            model.metrics.pop(step[1])
        elif kind == "customer":
            model.customers[step[1]] = step[2]
            model.last_customer[step[1]] = step[2]
        else:
            model.customers.pop(step[1])

    async def call(self, step: Step) -> tuple[int, dict[str, Any]]:
        tenant, kind = self.model.tenant, step[0]
        if kind == "metric":
            _, metric, meter, aggregation, reaggregate = step
            body: dict[str, Any] = {
                "stripeMeterEventName": self.event_names[meter],
                "aggregation": aggregation,
            }
            if reaggregate:
                body["reaggregate"] = reaggregate
            r = await self.api.put(f"/v1/mappings/{tenant}/{metric}", json=body)
        elif kind == "delete_metric":
            params = {"reaggregate": "apply"} if step[2] else {}
            r = await self.api.delete(f"/v1/mappings/{tenant}/{step[1]}", params=params)
        elif kind == "customer":
            r = await self.api.put(
                f"/v1/customers/{tenant}/{step[1]}", json={"stripeCustomerId": self.stripe_ids[step[2]]}
            )
        else:
            r = await self.api.delete(f"/v1/customers/{tenant}/{step[1]}")
        answer: dict[str, Any] = await r.json()
        return r.status, answer

    async def events(self, drawn: list[tuple[str, str, int, str]]) -> None:
        model, by_stream = self.model, defaultdict(list)
        for metric, customer, quantity, kind in drawn:
            stream = (metric, customer)
            counted = model.counted[stream]
            if kind == "duplicate" and counted:
                original = counted[len(counted) // 2]
                by_stream[stream].append(self.event(stream, original.quantity, original.ts, original.key))
            elif kind == "late" and counted:
                key = f"late-{uuid.uuid4().hex[:8]}"
                by_stream[stream].append(self.event(stream, quantity, self.clock - 60 * HOUR_S, key))
            else:
                self.clock += 1
                key = f"e-{uuid.uuid4().hex[:8]}"
                counted.append(Counted(key, quantity, self.clock))
                by_stream[stream].append(self.event(stream, quantity, self.clock, key))
        for (_metric, customer), events in by_stream.items():
            # one key per customer: its events keep their order through intake and the meter
            await produce(self.env, events, key=f"{model.tenant}:{customer}".encode())
            model.sent += len(events)
        await eventually(self.ledger_holds_all, timeout=90, what="every event of the step in the ledger")

    def event(self, stream: tuple[str, str], quantity: int, ts: int, key: str) -> dict[str, Any]:
        return {
            "tenantId": self.model.tenant,
            "metric": stream[0],
            "customerRef": stream[1],
            "quantity": quantity,
            "ts": datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z"),
            "idempotencyKey": key,
        }

    async def ledger_holds_all(self) -> bool:
        async with await psycopg.AsyncConnection.connect(self.env.database_url.value) as conn:
            cur = await conn.execute("SELECT count(*) FROM events WHERE tenant_id = %s", (self.model.tenant,))
            row = await cur.fetchone()
        return row is not None and int(row[0]) >= self.model.sent

    async def map_everything_again(self) -> None:
        """Every stream with usage mapped: its last meter and customer, else any that is accepted."""
        model = self.model
        for metric in sorted({m for m, _ in model.counted if model.counted[m, _]}):
            if metric in model.metrics:
                continue
            aggregation = "sum"
            choices = [model.last_meter[metric]] if metric in model.last_meter else []
            for meter in [*choices, *sorted(METERS)]:
                aggregation = METERS[meter] if METERS[meter] == "last" else "sum"
                await self.apply(("metric", metric, meter, aggregation, "apply"))
                if metric in model.metrics:
                    break
        for customer in sorted({c for (_, c), events in model.counted.items() if events}):
            if customer in model.customers:
                continue
            choices = [model.last_customer[customer]] if customer in model.last_customer else []
            for stripe_customer in [*choices, *STRIPE_CUSTOMERS]:
                await self.apply(("customer", customer, stripe_customer))
                if customer in model.customers:
                    break

    def expected(self) -> dict[tuple[str, str], dict[int, int]]:
        """Per (meter key, Stripe customer key): whole units per hour Stripe should hold."""
        model = self.model
        out: dict[tuple[str, str], dict[int, int]] = {}
        for (metric, customer), counted in model.counted.items():
            if metric not in model.metrics or customer not in model.customers or not counted:
                continue
            meter, aggregation = model.metrics[metric]
            hours: dict[int, list[Counted]] = defaultdict(list)
            for c in counted:
                hours[c.ts - c.ts % HOUR_S].append(c)
            folded = {hour: fold(aggregation, events) for hour, events in sorted(hours.items())}
            # a sum meter's hour without an event reads as nothing; a last meter's holds its value, 0 too
            out[meter, model.customers[customer]] = {
                hour: value for hour, value in folded.items() if value or METERS[meter] == "last"
            }
        return {pair: hours for pair, hours in out.items() if hours}

    def stripe(self) -> dict[tuple[str, str], dict[int, int]]:
        out: dict[tuple[str, str], dict[int, int]] = {}
        by_id = {v: k for k, v in self.stripe_ids.items()}
        for meter, meter_id in self.meter_ids.items():
            per: dict[tuple[str, int], list[Any]] = defaultdict(list)
            for e in self.state.meter_events(meter_id):
                if e.customer in by_id:
                    per[by_id[e.customer], e.timestamp - e.timestamp % HOUR_S].append(e)
            for (customer, hour), events in per.items():
                value = int(aggregate(METERS[meter], events))
                if value or METERS[meter] == "last":
                    out.setdefault((meter, customer), {})[hour] = value
        return out


def fold(aggregation: str, events: list[Counted]) -> int:
    if aggregation == "last":
        return round_units(max(events, key=lambda c: c.ts).quantity * MICROS)
    if aggregation == "count":
        return len(events)
    return floor_units(sum(c.quantity for c in events) * MICROS)


async def run_example(env: Settings, tmp_path: Path, steps: list[Step], restart_at: int) -> None:
    state = EmulatorState(ops_per_second=0)
    emulator = TestServer(create_emulator(state), host="127.0.0.1", port=free_port())
    await emulator.start_server()
    base = str(emulator.make_url("")).rstrip("/")
    stripe = emulator_settings(base)
    api = TestClient(TestServer(create_api(env.with_overrides(**stripe))))
    await api.start_server()
    state_dir, port = tmp_path / f"state-{uuid.uuid4().hex[:6]}", free_port()

    def new_worker() -> WorkerProcess:  # the same machine each time: its state dir and port
        return WorkerProcess(
            env, tmp_path / "worker.log", state_dir=state_dir, worker_web_port=port, **stripe
        )

    worker = new_worker().start()
    try:
        await asyncio.to_thread(worker.wait_ready, 180)
        world = World(env, state, api, worker)
        for n, step in enumerate(steps):
            if n == restart_at:
                worker.kill9()
                worker = world.worker = new_worker().start()
                await asyncio.to_thread(worker.wait_ready, 180)
            await world.apply(step)
        await world.map_everything_again()
        expected = world.expected()

        async def converged() -> bool:
            held = world.stripe()
            mapped = {pair: hours for pair, hours in held.items() if pair in expected}
            unmapped = {
                pair: hours for pair, hours in held.items() if pair not in expected and any(hours.values())
            }
            return mapped == expected and not unmapped

        try:
            await eventually(converged, timeout=120, what="Stripe equal to the oracle")
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\nsteps: {steps}\nrefusals: {world.model.refusals}\nexpected: {expected}\n"
                f"stripe: {world.stripe()}\nworker:\n{worker.log_tail(60)}"
            ) from None
        print(
            f"example: {len(steps)} steps, {world.model.sent} events, {len(world.model.refusals)} refusals,"
            f" {len(expected)} Stripe pairs billed: {sorted(expected)}"
        )
        for metric in world.model.metrics:
            r = await api.post(
                "/v1/reconciliation/run", json={"tenantId": world.model.tenant, "metric": metric}
            )
            report = await r.json()
            assert r.status == 200 and report["adjusted"] == [], (metric, report)
            assert report["status"] == "parity", (metric, report)
    finally:
        worker.stop()
        await api.close()
        await emulator.close()


@pytest.mark.exactly_once
@pytest.mark.timeout(1200)
@settings(
    max_examples=6,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # an example takes a minute: no shrinking
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=STEPS, restart=st.integers(0, 13))
def test_every_accepted_configuration_bills_right_and_every_refusal_names_its_field(
    env: Settings, tmp_path: Path, steps: list[Step], restart: int
) -> None:
    asyncio.run(run_example(env, tmp_path, steps, restart % len(steps)))


def test_the_oracle_folds_like_stripe() -> None:
    events = [Counted("a", 2, 10), Counted("b", 0, 12), Counted("c", 3, 11)]
    assert (fold("sum", events), fold("count", events), fold("last", events)) == (5, 3, 0)
