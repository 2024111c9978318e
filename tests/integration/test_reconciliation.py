"""The reconciler against the Stripe emulator: drift injected straight into "Stripe" is found exactly,
fixed within epsilon, flagged beyond it with its cause, and the runbook's two examples end in parity."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime
from typing import Any

import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from stripemeter.api.app import create_app as create_api
from stripemeter.api.appkeys import RECONCILER
from stripemeter.api.operator_metrics import create_operator_app
from stripemeter.domain.clock import Clock
from stripemeter.domain.config import Settings
from stripemeter.domain.periods import current_name
from stripemeter.schemas.drift import decode_drift
from stripemeter.schemas.topics import TopicNames
from stripemeter.tools.demo import usage
from stripemeter.tools.stripe_emulator import EmulatorState
from tests.integration.client import counters_of, eventually, outcomes_of, produce, read_topic
from tests.integration.harness import ApiClient, StartWorker
from tests.integration.stripe_helpers import emulator_settings, setup_tenant, stripe_totals

HOUR = 3600


@pytest_asyncio.fixture
async def stripe_env(env: Settings, emulator: tuple[EmulatorState, str]) -> Settings:
    """Settings pointing at the emulator; scheduled runs off (the tests run cycles on demand)."""
    return env.with_overrides(
        **emulator_settings(emulator[1]), reconcile_interval_seconds=0, reconcile_settle_seconds=0
    )


@pytest_asyncio.fixture
async def rapi(stripe_env: Settings) -> AsyncIterator[ApiClient]:
    client = TestClient(TestServer(create_api(stripe_env)))
    await client.start_server()
    yield client
    await client.close()


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat().replace("+00:00", "Z")


def event(tenant: str, customer: str, ts: float, quantity: int, key: str) -> dict[str, Any]:
    return usage(tenant, customer, datetime.fromtimestamp(ts, tz=UTC), quantity, key)


def hours_before_now(n: int) -> int:
    now = int(datetime.now(UTC).timestamp())
    return now - now % HOUR - n * HOUR


def two_hours_of_one_period() -> tuple[int, int]:
    """Two consecutive settled hours in one billing period, whatever the date (in the first hours of a
    month, the last two of the month before)."""
    h1, h2 = hours_before_now(2), hours_before_now(1)
    if current_name(datetime.fromtimestamp(h1, tz=UTC)) != current_name(datetime.fromtimestamp(h2, tz=UTC)):
        h1, h2 = hours_before_now(3), hours_before_now(2)
    return h1, h2


async def writer_synced(stripe_env: Settings, state: EmulatorState, tenant: str, ids: dict[str, str]) -> bool:
    local = Counter(
        {(c, b // 1000): t // 1_000_000 for (_m, c, b), t in (await counters_of(stripe_env, tenant)).items()}
    )
    mapped = Counter({k: v for k, v in local.items() if k[0] in ids})
    return bool(mapped) and stripe_totals(state, ids) == mapped


async def run(api: ApiClient, tenant: str, period: str, **extra: Any) -> dict[str, Any]:
    response = await api.post("/v1/reconciliation/run", json={"tenantId": tenant, "period": period, **extra})
    assert response.status == 200, await response.text()
    result: dict[str, Any] = await response.json()
    return result


def by_customer(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {i["customerRef"]: i for i in report["items"]}


def meter_event(state: EmulatorState, ids: dict[str, str], customer: str, value: int, ts: int) -> None:
    """A meter event nobody in stripemeter sent: a foreign or duplicated push."""
    event_name = next(iter(state.meters.values()))["event_name"]
    state.record_meter_event(
        {
            "event_name": event_name,
            "payload": {"stripe_customer_id": ids[customer], "value": str(value)},
            "timestamp": str(ts),
            "identifier": f"foreign-{uuid.uuid4().hex[:8]}",
        }
    )


async def test_injected_drift_is_found_exactly_fixed_within_epsilon_and_flagged_beyond(
    stripe_env: Settings, start_worker: StartWorker, rapi: ApiClient, emulator: tuple[EmulatorState, str]
) -> None:
    state, base = emulator
    tenant = f"rc-{uuid.uuid4().hex[:6]}"
    customers = ["c0", "c1", "c2", "c3", "c4"]
    ids, _meter = await setup_tenant(rapi, state, tenant, customers[:4])  # c4 has no customer mapping
    start_worker("w1", **emulator_settings(base), reconcile_interval_seconds=0).wait_ready()
    h1, h2 = two_hours_of_one_period()
    period = current_name(datetime.fromtimestamp(h1, tz=UTC))
    batch = [
        event(tenant, c, h + 60 * i, 50, f"{c}-{h}-{i}")
        for c in customers
        for h in (h1, h2)
        for i in range(10)
    ]
    await produce(stripe_env, [batch])  # 1000 per customer: 500 in each hour
    await eventually(lambda: writer_synced(stripe_env, state, tenant, ids), timeout=90, what="writer parity")

    first = by_customer(await run(rapi, tenant, period))
    assert {c: i["status"] for c, i in first.items()} == dict.fromkeys(customers[:4], "parity") | {
        "c4": "drift"
    }

    # Drift injected straight into Stripe:
    meter_event(state, ids, "c0", 2, h1 + 120)  # c0: +2 of 1000, within epsilon
    meter_event(state, ids, "c1", 100, h2 + 300)  # c1: +100, a foreign push
    dropped = next(e for e in state.events if e.customer == ids["c2"] and e.timestamp // HOUR * HOUR == h1)
    state.cancel_meter_event(  # c2: a delivered push vanishes
        {"event_name": dropped.event_name, "type": "cancel", "cancel": {"identifier": dropped.identifier}}
    )
    # a delivered push Stripe's summary does not show may be lag, for an hour at most: the reconciler
    # looks from two hours on, when the vanished push is a loss
    reconciler = rapi.app[RECONCILER]
    reconciler.clock = Clock(reconciler.clock.offset_seconds + 2 * HOUR)
    report = await run(rapi, tenant, period)
    items = by_customer(report)
    c0, c1, c2, c3, c4 = (items[c] for c in customers)
    assert (c0["status"], c0["action"], c0["diffAbs"], c0["stripe"]) == (
        "within_epsilon",
        "adjusted",
        2,
        1002,
    )
    assert c0["hours"] == [{"bucket": iso(h1), "local": 500, "stripe": 502, "diff": -2}]
    assert [(a["customerRef"], a["bucket"], a["value"]) for a in report["adjusted"]] == [("c0", iso(h1), -2)]
    assert (c1["status"], c1["action"], c1["diffAbs"]) == ("drift", "replay", 100)
    assert c1["hours"] == [{"bucket": iso(h2), "local": 500, "stripe": 600, "diff": -100}]
    assert [c["code"] for c in c1["causes"]] == ["stripe_higher"]
    assert (c2["status"], c2["diffAbs"], c2["hours"][0]["bucket"]) == ("drift", dropped.value, iso(h1))
    assert c2["hours"][0]["unseenSeconds"] > 3600  # said so: not shown an hour after delivery
    assert [c["code"] for c in c2["causes"]] == ["stripe_missing"]
    assert "still not in Stripe's summaries" in c2["causes"][0]["message"]
    assert (c3["status"], c3["diffAbs"]) == ("parity", 0)
    assert (c4["status"], c4["local"], c4["stripe"]) == ("drift", 1000, 0)
    assert c4["causes"][0]["code"] == "missing_mapping" and "customer mapping" in c4["causes"][0]["message"]
    assert sorted(f["customerRef"] for f in report["flagged"]) == ["c1", "c2", "c4"]

    # every item beyond parity is on reconciliation.drift, in the contract's shape
    drift_topic = TopicNames(stripe_env.topic_prefix, stripe_env.app_id).drift
    records = [decode_drift(r.value) for r in await read_topic(stripe_env, drift_topic, expect=5)]
    assert sorted(r.customer_ref for r in records) == ["c0", "c1", "c2", "c4", "c4"]

    # the correction reached Stripe: c0 is at parity now; the rest is unchanged
    second = by_customer(await run(rapi, tenant, period))
    assert {c: i["status"] for c, i in second.items()} == {
        "c0": "parity", "c1": "drift", "c2": "drift", "c3": "parity", "c4": "drift",
    }  # fmt: skip

    summary = await (
        await rapi.get(f"/v1/reconciliation/summary?tenantId={tenant}&metric=requests&period={period}")
    ).json()
    assert summary["status"] == "drift" and summary["period"]["name"] == period
    assert summary["totals"]["diffAbs"] == 100 + dropped.value + 1000
    csv = await (
        await rapi.get(
            f"/v1/reconciliation/summary?tenantId={tenant}&metric=requests&period={period}&format=csv"
        )
    ).text()
    assert csv.splitlines()[0].startswith("customerRef,local,stripe,diffAbs,diffPct,status")
    assert len(csv.splitlines()) == 6
    operator = TestClient(TestServer(create_operator_app(rapi.app)))
    await operator.start_server()
    try:
        scrape = await (await operator.get("/metrics")).text()
    finally:
        await operator.close()
    labels = f'customer="c1",metric="requests",period="{period}",tenant="{tenant}"'
    gauge = f"reconciliation_diff_abs{{{labels}}} 100.0"
    assert gauge in scrape
    assert tenant not in await (await rapi.get("/metrics")).text()  # operator data only

    # the operator, having checked local is right, aligns Stripe beyond epsilon too
    aligned = by_customer(await run(rapi, tenant, period, align="all"))
    assert (aligned["c1"]["action"], aligned["c2"]["action"], aligned["c4"]["action"]) == (
        "adjusted", "adjusted", "replay",
    )  # fmt: skip
    final = by_customer(await run(rapi, tenant, period))
    assert [c for c, i in final.items() if i["status"] != "parity"] == ["c4"]


async def test_runbook_examples_late_event_and_duplicate_end_in_parity(
    stripe_env: Settings, start_worker: StartWorker, rapi: ApiClient, emulator: tuple[EmulatorState, str]
) -> None:
    state, base = emulator
    tenant = f"rb-{uuid.uuid4().hex[:6]}"
    ids, _meter = await setup_tenant(rapi, state, tenant, ["acme"])
    start_worker("w1", **emulator_settings(base), reconcile_interval_seconds=0).wait_ready()
    now_hour = hours_before_now(0)
    period = current_name(datetime.fromtimestamp(now_hour, tz=UTC))
    await produce(stripe_env, [[event(tenant, "acme", now_hour + 30 * i, 100, f"e{i}") for i in range(10)]])
    await eventually(lambda: writer_synced(stripe_env, state, tenant, ids), timeout=90, what="writer parity")

    # Example 1: a late event (5 h old, inside the 48 h window) is counted into its own hour and pushed
    late_hour = hours_before_now(5)
    if current_name(datetime.fromtimestamp(late_hour, tz=UTC)) != period:
        late_hour = now_hour  # at the very start of a month, stay inside the period
    await produce(stripe_env, [event(tenant, "acme", late_hour + 600, 100, "late-1")])

    async def late_pushed() -> bool:
        return (
            await writer_synced(stripe_env, state, tenant, ids)
            and stripe_totals(state, ids)[("acme", late_hour)] >= 100
        )

    await eventually(late_pushed, timeout=60, what="the late event in Stripe")
    item = by_customer(await run(rapi, tenant, period))["acme"]
    assert (item["status"], item["local"], item["stripe"]) == ("parity", 1100, 1100)
    # ... and a residual within epsilon (a stray unit) is adjusted away
    meter_event(state, ids, "acme", 1, now_hour + 60)
    item = by_customer(await run(rapi, tenant, period))["acme"]
    assert (item["status"], item["action"]) == ("within_epsilon", "adjusted")
    assert by_customer(await run(rapi, tenant, period))["acme"]["status"] == "parity"

    # Example 2: a duplicate is deduplicated ...
    await produce(stripe_env, [event(tenant, "acme", now_hour + 30, 100, "e1")])
    await eventually(
        lambda: _has(outcomes_of(stripe_env, tenant), "duplicate", 1), timeout=30, what="the duplicate"
    )
    assert by_customer(await run(rapi, tenant, period))["acme"]["status"] == "parity"
    # ... and had a duplicate reached Stripe, a negative correction restores parity
    meter_event(state, ids, "acme", 100, now_hour + 30)
    item = by_customer(await run(rapi, tenant, period))["acme"]
    assert (item["status"], item["diffAbs"], item["causes"][0]["code"]) == ("drift", 100, "stripe_higher")
    aligned = await run(rapi, tenant, period, align="all")
    assert [a["value"] for a in aligned["adjusted"]] == [-100]
    assert by_customer(await run(rapi, tenant, period))["acme"]["status"] == "parity"

    # A push Stripe does not show yet is in flight, not drift
    state.clock_offset += 3600  # what Stripe received so far is an hour old: visible
    state.faults.update({"summary_delay": 600})  # what it receives now is not, for 10 minutes
    before = sum(stripe_totals(state, ids).values())
    await produce(stripe_env, [event(tenant, "acme", now_hour + 900, 7, "fresh")])

    async def pushed() -> bool:
        return sum(stripe_totals(state, ids).values()) == before + 7

    await eventually(pushed, timeout=60, what="the push")
    slow = stripe_env.with_overrides(reconcile_settle_seconds=300)
    client = TestClient(TestServer(create_api(slow)))
    await client.start_server()
    try:
        item = by_customer(await run(client, tenant, period))["acme"]
    finally:
        await client.close()
    assert (item["status"], item["inFlight"], item["action"]) == ("parity", 7, "wait")


async def _has(outcomes: Awaitable[dict[str, int]], outcome: str, n: int) -> bool:
    return (await outcomes).get(outcome, 0) >= n


async def test_run_and_summary_reject_bad_requests(rapi: ApiClient) -> None:
    bad = await rapi.post("/v1/reconciliation/run", json={"tenantId": "t", "period": "2026-13"})
    assert bad.status == 400 and (await bad.json())["error"]["field"] == "period"
    bad = await rapi.post("/v1/reconciliation/run", json={"period": "2026-11"})
    assert (await bad.json())["error"]["field"] == "tenantId"
    bad = await rapi.get("/v1/reconciliation/summary?tenantId=t")
    assert bad.status == 400 and (await bad.json())["error"]["field"] == "metric"
    for period in ("0000-01", "9999-12", "2026-11%0A", "2026-11-01"):
        bad = await rapi.get(f"/v1/reconciliation/summary?tenantId=t&metric=m&period={period}")
        assert bad.status == 400 and (await bad.json())["error"]["field"] == "period", period
        bad = await rapi.post(
            "/v1/reconciliation/run", json={"tenantId": "t", "period": period.replace("%0A", "\n")}
        )
        assert bad.status == 400 and (await bad.json())["error"]["field"] == "period", period
    empty = await (
        await rapi.get("/v1/reconciliation/summary?tenantId=nobody&metric=m&period=2026-01")
    ).json()
    assert (empty["status"], empty["items"], empty["checkedAt"]) == ("parity", [], None)
