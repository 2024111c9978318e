"""The Stripe writer against the project's emulator: parity, crash safety, faults, parking."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from stripemeter.domain.config import Settings
from stripemeter.tools.stripe_emulator import EmulatorState
from tests.integration.client import counters_of, eventually, produce
from tests.integration.harness import ApiClient, StartWorker
from tests.integration.stripe_helpers import emulator_settings, setup_tenant, stripe_totals


def summaries(base: str, meter_id: str, ids: dict[str, str]) -> Counter[tuple[str, int]]:
    """Stripe's own view, through the real client: hourly event summaries per customer."""
    import stripe

    client = stripe.StripeClient("sk_test_emulator", base_addresses={"api": base, "meter_events": base})
    now = int(datetime.now(UTC).timestamp())
    start, end = now - now % 3600 - 6 * 3600, now - now % 3600 + 3600
    totals: Counter[tuple[str, int]] = Counter()
    for customer, cus in ids.items():
        page = client.v1.billing.meters.event_summaries.list(
            meter_id, {"customer": cus, "start_time": start, "end_time": end, "value_grouping_window": "hour"}
        )
        for summary in page.auto_paging_iter():
            if summary.aggregated_value:
                totals[(customer, summary.start_time)] += int(summary.aggregated_value)
    return totals


def local_totals(counters: dict[tuple[str, str, int], int]) -> Counter[tuple[str, int]]:
    return Counter({(c, b // 1000): t // 1_000_000 for (_m, c, b), t in counters.items()})


def events(tenant: str, customers: list[str], n: int) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    return [
        {
            "tenantId": tenant,
            "metric": "requests",
            "customerRef": customers[i % len(customers)],
            "quantity": 1 + i % 3,
            "ts": (now - timedelta(minutes=7 * (i % 20))).isoformat().replace("+00:00", "Z"),
            "idempotencyKey": f"e{i}",
        }
        for i in range(n)
    ]


@pytest.mark.exactly_once
async def test_stripe_ends_equal_to_local_counters_through_faults_and_a_kill(
    env: Settings,
    start_worker: StartWorker,
    api: ApiClient,
    emulator: tuple[EmulatorState, str],
) -> None:
    state, base = emulator
    tenant = f"sw-{uuid.uuid4().hex[:6]}"
    customers = [f"c{i}" for i in range(5)]
    ids, meter_id = await setup_tenant(api, state, tenant, customers)
    # the faults below strike v1's meter events; the stream's kill mid-request is test_stripe_stream's
    stripe = emulator_settings(base)
    worker = start_worker("w1", slot="main", stripe_api="v1", **stripe)
    worker.wait_ready()
    # a 429 storm, and 30 % of meter event calls failing with 500
    state.faults.update(
        {"rate_limit": 8, "server_error_rate": 0.3, "path_prefix": "/v1/billing/meter_events"}
    )
    await produce(env, [events(tenant, customers, 300)])

    async def parity_at(total: int) -> bool:
        local = local_totals(await counters_of(env, tenant))
        if sum(local.values()) != total or stripe_totals(state, ids) != local:
            return False
        # and Stripe's own summaries, per customer and hour, say the same
        return await asyncio.to_thread(summaries, base, meter_id, ids) == local

    async def parity() -> bool:
        return await parity_at(sum(1 + i % 3 for i in range(300)))

    await eventually(parity, timeout=120, what="Stripe totals equal to local counters")

    # More usage; Stripe answers slowly, and the worker dies while a push is in flight: between the
    # Stripe call and recording its answer.
    state.faults.update({"latency": 1.0})
    await produce(env, [events(tenant, customers, 400)[300:]])

    async def push_in_flight() -> bool:
        body = await (
            await api.get("/v1/stripe/pushes", params={"tenantId": tenant, "status": "pending"})
        ).json()
        return bool(body["counters"])

    await eventually(push_in_flight, timeout=60, what="a pending push")
    worker.kill9()
    state.faults.update({"latency": 0, "server_error_rate": 0})
    start_worker("w2", slot="main", stripe_api="v1", **stripe).wait_ready()

    async def parity_after() -> bool:
        return await parity_at(sum(1 + i % 3 for i in range(400)))

    await eventually(parity_after, timeout=120, what="parity after kill -9 and restart")


async def test_unknown_customer_is_parked_while_the_others_flow(
    env: Settings,
    start_worker: StartWorker,
    api: ApiClient,
    emulator: tuple[EmulatorState, str],
) -> None:
    state, base = emulator
    tenant = f"pk-{uuid.uuid4().hex[:6]}"
    ids, _ = await setup_tenant(api, state, tenant, ["good"])
    await api.put(f"/v1/customers/{tenant}/ghost", json={"stripeCustomerId": f"cus_doesnotexist_{tenant}"})
    stripe = emulator_settings(base)
    # Stripe fails every read of its meters (the writer's meter catalog) while the worker starts
    state.faults.update({"server_error_rate": 1.0, "path_prefix": "/v1/billing/meters"})
    worker = start_worker(**stripe)
    worker.wait_ready()
    await produce(env, [events(tenant, ["good", "ghost"], 20)])

    async def reads_failed() -> bool:
        return "reading Stripe for" in worker.log_tail(400)

    await eventually(reads_failed, timeout=60, what="the writer meeting a failing meter read")
    assert worker.proc is not None and worker.proc.poll() is None, worker.log_tail()  # still counting
    state.faults.update({"server_error_rate": 0.0, "path_prefix": None})

    async def parked() -> bool:
        body = await (
            await api.get("/v1/stripe/pushes", params={"tenantId": tenant, "status": "parked"})
        ).json()
        return any(c["customerRef"] == "ghost" for c in body["counters"])

    await eventually(parked, timeout=60, what="the ghost customer parked")
    body = await (await api.get("/v1/stripe/pushes", params={"tenantId": tenant, "status": "parked"})).json()
    assert all(c["reason"] for c in body["counters"])

    async def good_synced() -> bool:
        return sum(stripe_totals(state, ids).values()) == sum(1 + i % 3 for i in range(0, 20, 2))

    await eventually(good_synced, timeout=60, what="the good customer pushed")
