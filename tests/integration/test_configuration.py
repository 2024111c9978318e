"""Every configuration the API accepts bills right from the moment it is accepted (issue 26):
read-your-writes mappings through a running worker, aggregation changes only with their counters
re-aggregated, one counter stream per Stripe pair, and a writer that never acts on a mapping it read
before a change."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from stripemeter.adapters.postgres import push_leases, push_totals
from stripemeter.adapters.postgres.push_rows import PostgresPushRows
from stripemeter.adapters.postgres.push_totals import Latest
from stripemeter.core.push_plan import StripeMeterSpec, new_request
from stripemeter.core.push_rows import Delivery, Fence
from stripemeter.domain import periods
from stripemeter.domain.config import Settings
from stripemeter.tools.stripe_emulator import EmulatorState
from tests.integration.client import counters_of, eventually, produce
from tests.integration.harness import ApiClient, StartWorker, WorkerProcess
from tests.integration.stripe_helpers import emulator_settings, stripe_totals


def new_tenant(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def sum_meter(state: EmulatorState) -> str:
    name = f"m_{uuid.uuid4().hex[:8]}"
    state.create_meter({"display_name": name, "event_name": name, "default_aggregation": {"formula": "sum"}})
    return name


def event(tenant: str, metric: str, customer: str, quantity: float, at: datetime, key: str) -> dict[str, Any]:
    return {
        "tenantId": tenant,
        "metric": metric,
        "customerRef": customer,
        "quantity": quantity,
        "ts": at.isoformat().replace("+00:00", "Z"),
        "idempotencyKey": key,
    }


async def put(api: ApiClient, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = await api.put(path, json=body)
    answer: dict[str, Any] = await response.json()
    return response.status, answer


def per_customer(counters: dict[tuple[str, str, int], int], metric: str) -> Counter[str]:
    totals: Counter[str] = Counter()
    for (m, customer, _bucket), micros in counters.items():
        if m == metric:
            totals[customer] += micros
    return totals


async def map_customers(
    api: ApiClient, state: EmulatorState, tenant: str, customers: tuple[str, ...]
) -> dict[str, str]:
    """A Stripe customer in the emulator for each, and its mapping."""
    ids = {}
    for customer in customers:
        ids[customer] = state.create_customer({"email": f"{customer}@example.com"})["id"]
        body = {"stripeCustomerId": ids[customer]}
        status, answer = await put(api, f"/v1/customers/{tenant}/{customer}", body)
        assert status == 200, answer
    return ids


async def warm_up(env: Settings, worker: WorkerProcess, tenant: str) -> None:
    """The worker counts a message in every keyed partition, so it has loaded the mappings of all of
    them before the test's change: what it learns afterwards, it learns from the change itself."""
    now = datetime.now(UTC)
    await produce(env, [event(tenant, "warm", f"w{i}", 1, now, f"warm{i}") for i in range(8)])

    async def counted() -> bool:
        return len(per_customer(await counters_of(env, tenant), "warm")) == 8

    await eventually(counted, timeout=60, what="the warm-up events counted")


async def test_a_count_mapping_bills_events_produced_in_the_same_second(
    env: Settings,
    start_worker: StartWorker,
    stripe_api: ApiClient,
    emulator: tuple[EmulatorState, str],
) -> None:
    state, base = emulator
    tenant = new_tenant("rw")
    worker = start_worker(**emulator_settings(base))
    worker.wait_ready()
    await warm_up(env, worker, tenant)
    ids = await map_customers(stripe_api, state, tenant, ("a", "b"))
    event_name = sum_meter(state)
    status, body = await put(
        stripe_api,
        f"/v1/mappings/{tenant}/calls",
        {"stripeMeterEventName": event_name, "aggregation": "count"},
    )
    assert status == 200, body
    now = datetime.now(UTC)
    # right after the answer: 15 events of quantities 1..3 for each customer
    await produce(env, [event(tenant, "calls", "ab"[i % 2], 1 + i % 3, now, f"c{i}") for i in range(30)])

    async def counted() -> bool:
        return per_customer(await counters_of(env, tenant), "calls") == {"a": 15_000_000, "b": 15_000_000}

    await eventually(counted, timeout=60, what="15 events counted for each customer")

    async def billed() -> bool:
        return stripe_totals(state, ids) == Counter(
            {k: v for k, v in _by_hour(await counters_of(env, tenant), "calls").items()}
        )

    await eventually(billed, timeout=60, what="Stripe holding the event counts")
    assert sum(stripe_totals(state, ids).values()) == 30


def _by_hour(counters: dict[tuple[str, str, int], int], metric: str) -> Counter[tuple[str, int]]:
    return Counter({(c, b // 1000): t // 1_000_000 for (m, c, b), t in counters.items() if m == metric})


async def test_lowered_lateness_judges_events_produced_right_after_the_answer(
    env: Settings, start_worker: StartWorker, api: ApiClient
) -> None:
    tenant = new_tenant("lt")
    worker = start_worker()
    worker.wait_ready()
    await warm_up(env, worker, tenant)
    now = datetime.now(UTC)
    await produce(env, [event(tenant, "m", "c", 1, now, "first")])

    async def first_counted() -> bool:
        return per_customer(await counters_of(env, tenant), "m") == {"c": 1_000_000}

    await eventually(first_counted, what="the first event counted (the watermark at now)")
    status, _ = await put(
        api, f"/v1/mappings/{tenant}/m", {"stripeMeterEventName": "x", "latenessSeconds": 3600}
    )
    assert status == 200
    await produce(env, [event(tenant, "m", "c", 5, now - timedelta(hours=2), "two-hours-old")])

    async def judged() -> bool:
        async with await psycopg.AsyncConnection.connect(env.database_url.value) as conn:
            cur = await conn.execute(
                "SELECT outcome FROM events WHERE tenant_id = %s AND idempotency_key = 'two-hours-old'",
                (tenant,),
            )
            row = await cur.fetchone()
        return row is not None

    await eventually(judged, what="the two-hour-old event in the ledger")
    async with await psycopg.AsyncConnection.connect(env.database_url.value) as conn:
        cur = await conn.execute(
            "SELECT outcome FROM events WHERE tenant_id = %s AND idempotency_key = 'two-hours-old'", (tenant,)
        )
        assert await cur.fetchone() == ("late",)
    assert per_customer(await counters_of(env, tenant), "m") == {"c": 1_000_000}


async def test_an_aggregation_change_is_refused_until_its_counters_are_reaggregated(
    env: Settings,
    start_worker: StartWorker,
    stripe_api: ApiClient,
    emulator: tuple[EmulatorState, str],
) -> None:
    state, base = emulator
    tenant = new_tenant("ag")
    worker = start_worker(**emulator_settings(base))
    worker.wait_ready()
    ids = await map_customers(stripe_api, state, tenant, ("a", "b"))
    now = datetime.now(UTC)
    # counted before any mapping existed: under the default, a sum
    await produce(env, [event(tenant, "calls", "a", q, now, f"k{q}") for q in (2, 3, 5)])
    await produce(env, [event(tenant, "calls", "b", 1, now, f"b{i}") for i in range(2)])

    async def summed() -> bool:
        return per_customer(await counters_of(env, tenant), "calls") == {"a": 10_000_000, "b": 2_000_000}

    await eventually(summed, what="the events summed under the default")
    event_name = sum_meter(state)
    path = f"/v1/mappings/{tenant}/calls"
    status, body = await put(stripe_api, path, {"stripeMeterEventName": event_name, "aggregation": "count"})
    assert status == 409 and body["error"]["field"] == "aggregation", body
    assert "2 counters" in body["error"]["message"]
    status, body = await put(
        stripe_api,
        path,
        {"stripeMeterEventName": event_name, "aggregation": "count", "reaggregate": "dry-run"},
    )
    assert status == 200 and body["dryRun"] is True
    assert body["totals"] == {"before": 12, "after": 5, "delta": -7}
    assert per_customer(await counters_of(env, tenant), "calls") == {"a": 10_000_000, "b": 2_000_000}
    status, body = await put(
        stripe_api, path, {"stripeMeterEventName": event_name, "aggregation": "count", "reaggregate": "apply"}
    )
    assert status == 200 and body["reaggregated"]["counters"] == 2, body
    assert body["countedBeforeMapping"]["events"] == 5
    await produce(env, [event(tenant, "calls", "a", 7, now, "after")])

    async def counted() -> bool:
        return per_customer(await counters_of(env, tenant), "calls") == {"a": 4_000_000, "b": 2_000_000}

    await eventually(counted, what="the counters re-aggregated as counts")

    async def billed() -> bool:
        return sum(stripe_totals(state, ids).values()) == 6

    await eventually(billed, what="Stripe holding the counts")


async def test_a_stripe_pair_takes_one_counter_stream(api: ApiClient, stack: Settings) -> None:
    a, b = new_tenant("pa"), new_tenant("pb")
    cus = f"cus_{uuid.uuid4().hex[:10]}"
    assert (await put(api, f"/v1/customers/{a}/one", {"stripeCustomerId": cus}))[0] == 200
    status, body = await put(api, f"/v1/customers/{a}/two", {"stripeCustomerId": cus})
    assert status == 409 and body["error"]["field"] == "stripeCustomerId", body
    status, body = await put(api, f"/v1/customers/{b}/one", {"stripeCustomerId": cus})
    assert status == 409 and body["error"]["field"] == "stripeCustomerId", body
    assert "another tenant" in body["error"]["message"]
    assert (await put(api, f"/v1/mappings/{a}/m1", {"stripeMeterEventName": "shared"}))[0] == 200
    status, body = await put(api, f"/v1/mappings/{a}/m2", {"stripeMeterEventName": "shared"})
    assert status == 409 and body["error"]["field"] == "stripeMeterEventName", body
    # another tenant may use the same meter: its customers are its own
    assert (await put(api, f"/v1/mappings/{b}/m1", {"stripeMeterEventName": "shared"}))[0] == 200
    listed = await (await api.get(f"/v1/customers/{a}")).json()
    assert [c["customerRef"] for c in listed["customers"]] == ["one"]


async def test_usage_of_open_periods_is_never_left_at_an_old_pair(api: ApiClient, stack: Settings) -> None:
    tenant = new_tenant("rm")
    first, second = f"cus_{uuid.uuid4().hex[:10]}", f"cus_{uuid.uuid4().hex[:10]}"
    assert (await put(api, f"/v1/mappings/{tenant}/m", {"stripeMeterEventName": "ev"}))[0] == 200
    assert (await put(api, f"/v1/customers/{tenant}/c", {"stripeCustomerId": first}))[0] == 200
    await deliver(stack, tenant, first)
    # a remap would leave 5 units billed to the first customer
    status, body = await put(api, f"/v1/customers/{tenant}/c", {"stripeCustomerId": second})
    assert status == 409 and body["error"]["field"] == "stripeCustomerId", body
    assert body["error"]["code"] == "usage_left_behind"
    status, body = await put(api, f"/v1/mappings/{tenant}/m", {"stripeMeterEventName": "ev2"})
    assert status == 409 and body["error"]["field"] == "stripeMeterEventName", body
    # nor can another customerRef take the pair over once the first one's mapping is gone
    assert (await api.delete(f"/v1/customers/{tenant}/c")).status == 200
    status, body = await put(api, f"/v1/customers/{tenant}/other", {"stripeCustomerId": first})
    assert status == 409 and body["error"]["field"] == "stripeCustomerId", body
    # nor another tenant: the Stripe customer's invoice holds this tenant's usage
    status, body = await put(api, f"/v1/customers/{new_tenant('rb')}/c", {"stripeCustomerId": first})
    assert status == 409 and body["error"]["code"] == "stripe_customer_taken", body
    # the same pair again is no remap
    assert (await put(api, f"/v1/customers/{tenant}/c", {"stripeCustomerId": first}))[0] == 200


async def deliver(stack: Settings, tenant: str, stripe_customer: str) -> None:
    """A push row of this hour for (tenant, m, c) whose request of 5 units Stripe took."""
    now = datetime.now(UTC)
    bucket = now.replace(minute=0, second=0, microsecond=0)
    app = "app-" + tenant
    async with await psycopg.AsyncConnection.connect(stack.database_url.value, autocommit=True) as conn:
        period = periods.holding(bucket).start  # as the writer records it
        await push_totals.record_latest(
            conn, [Latest(tenant, "m", "c", bucket, 5_000_000, 1, app, 0, period)], now
        )
        rows = PostgresPushRows(conn)
        fence = Fence(app, await push_leases.claim(conn, app, 0, "w", now), 0)
        (row,) = [r for s in await rows.due(app, [0], now) for r in s.rows if r.key[0] == tenant]
        meter = StripeMeterSpec("mtr_1", "ev", "sum", "stripe_customer_id", "value", True, None)
        request = new_request(row, 5, "sum", meter, stripe_customer)
        assert await rows.record_pending(row, request, fence, now)
        (pending,) = [r for s in await rows.due(app, [0], now) for r in s.rows if r.key[0] == tenant]
        assert await rows.mark_delivered(pending, Delivery(request.identifier, 5, True), fence, now)


async def test_a_writer_decision_made_before_a_mapping_change_changes_nothing(
    api: ApiClient, stack: Settings
) -> None:
    """The writer read a counter while its customer had no mapping and is about to mark it unmapped;
    the mapping is saved in between: the mark must fail so that the writer reads again and pushes."""
    tenant = new_tenant("wr")
    now = datetime.now(UTC)
    bucket = now.replace(minute=0, second=0, microsecond=0)
    app = "app-" + tenant
    async with await psycopg.AsyncConnection.connect(stack.database_url.value, autocommit=True) as conn:
        period = periods.holding(bucket).start  # as the writer records it
        await push_totals.record_latest(
            conn, [Latest(tenant, "m", "c", bucket, 5_000_000, 1, app, 0, period)], now
        )
        rows = PostgresPushRows(conn)
        fence = Fence(app, await push_leases.claim(conn, app, 0, "w", now), 0)
        (stream,) = [s for s in await rows.due(app, [0], now) if s.rows[0].key[0] == tenant]
        assert stream.stripe_customer is None  # decided on: no customer mapping
        assert (await put(api, f"/v1/mappings/{tenant}/m", {"stripeMeterEventName": "ev"}))[0] == 200
        assert (await put(api, f"/v1/customers/{tenant}/c", {"stripeCustomerId": f"cus_{tenant}"}))[0] == 200
        marked = await rows.park(stream.rows[0], "no metric or customer mapping yet", fence, now, "unmapped")
        assert not marked
        (again,) = [s for s in await rows.due(app, [0], now) if s.rows[0].key[0] == tenant]
        assert again.stripe_customer == f"cus_{tenant}" and again.rows[0].status == "waiting"


@pytest.mark.parametrize("aggregation", ["count", "last"])
async def test_deleting_a_count_or_last_mapping_with_counters_is_a_change_of_aggregation(
    env: Settings, start_worker: StartWorker, api: ApiClient, aggregation: str
) -> None:
    tenant = new_tenant("dl")
    assert (
        await put(api, f"/v1/mappings/{tenant}/m", {"stripeMeterEventName": "ev", "aggregation": aggregation})
    )[0] == 200
    start_worker().wait_ready()
    now = datetime.now(UTC)
    await produce(env, [event(tenant, "m", "c", q, now + timedelta(seconds=q), f"k{q}") for q in (2, 3)])

    async def counted() -> bool:
        return bool(per_customer(await counters_of(env, tenant), "m"))

    await eventually(counted, what="the counter in PostgreSQL")
    response = await api.delete(f"/v1/mappings/{tenant}/m")
    assert response.status == 409 and (await response.json())["error"]["field"] == "aggregation"
    assert (await api.delete(f"/v1/mappings/{tenant}/m", params={"reaggregate": "apply"})).status == 200

    async def summed() -> bool:
        return per_customer(await counters_of(env, tenant), "m") == {"c": 5_000_000}

    await eventually(summed, what="the counter re-aggregated as a sum")
    assert (await api.delete(f"/v1/mappings/{tenant}/m")).status == 404
