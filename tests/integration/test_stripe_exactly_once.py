"""Stripe holds exactly what was counted, with any number of workers, against Stripe's real semantics.

Three workers share the pipeline; one is added and one removed mid-stream and one is killed with -9.
The Stripe emulator answers like Stripe on a bad day: 500s (some after the event landed), answers lost
after processing, one 25 operations/s budget for everyone (429 above it), and validation that happens
after answering 200: five customers are mapped to Stripe customers that do not exist, so their
events are dropped and reported to the webhook, which parks their counters until the mappings are
fixed. 20,000+ events for 50 customers over a sum (fractional quantities), a count and a last metric,
with duplicates, late events inside the window and too-late ones (replayed). At the end Stripe's
hourly summaries, read through the real client, equal an oracle for every customer, metric and hour.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio
import stripe
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from stripemeter.adapters.kafka.admin import create_topics_of, delete_topics_of
from stripemeter.api.app import create_app as create_api
from stripemeter.core.push_plan import targets
from stripemeter.domain.config import Secret, Settings
from stripemeter.domain.periods import holding
from stripemeter.tools.stripe_emulator import EmulatorState
from stripemeter.tools.stripe_emulator import create_app as create_emulator
from stripemeter.tools.stripe_emulator.meter_stream import STREAM_PATH
from tests.integration.client import eventually, produce
from tests.integration.harness import WorkerProcess, free_port, isolated_settings
from tests.integration.workload import round_seed

pytestmark = pytest.mark.exactly_once  # never rerun by CI; repeated by ./dev soak

if TYPE_CHECKING:
    from stripe.params.billing import MeterEventSummaryListParams

HOUR = 3600
CUSTOMERS = [f"c{i:02d}" for i in range(50)]
GHOSTS = CUSTOMERS[-5:]  # mapped to Stripe customers that do not exist: dropped, reported, fixed
WEBHOOK_SECRET = "whsec_exactly_once_test"
METERS = {  # metric -> (aggregation, Stripe formula, customer payload key, value payload key)
    "calls": ("sum", "sum", "stripe_customer_id", "value"),
    "jobs": ("count", "sum", "account", "n"),  # custom payload keys
    "seats": ("last", "last", "stripe_customer_id", "value"),
}
WORKER_BUDGET = 8  # calls/s per worker: three of them stay near the emulator's 25/s test-mode budget


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def workload(
    tenant: str, now: float, rng: random.Random
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(events in sending order, too-late events). Four hours of usage; each batch of a customer's
    stream goes forward in time, but now and then an earlier hour's events arrive late (inside the
    48 h window); 10 % of events are sent twice."""
    hour0 = int(now) - int(now) % HOUR - 3 * HOUR
    events: list[dict[str, Any]] = []
    seat_ts: dict[str, float] = {}
    for n in range(20_000):
        customer = CUSTOMERS[n % len(CUSTOMERS)]
        metric = ("calls", "calls", "jobs", "seats")[n % 4]
        ts = min(hour0 + rng.uniform(0, 4 * HOUR), now - 1)
        if metric == "seats":  # distinct times per customer: "last" has one answer
            ts = max(ts, seat_ts.get(customer, 0) + 0.001)
            seat_ts[customer] = ts
            quantity: float = rng.randint(1, 40)
        elif metric == "calls":
            quantity = rng.choice([0.25, 0.5, 0.9, 1.7, 3, 0.333333, 12.000001])
        else:
            quantity = 1
        events.append(
            {"tenantId": tenant, "metric": metric, "customerRef": customer, "quantity": quantity,
             "ts": iso(ts), "idempotencyKey": f"e{n}"}
        )  # fmt: skip
    # late inside the window: sorted by time except a tenth of the events, which come at the end
    events.sort(key=lambda e: e["ts"])
    late = [e for i, e in enumerate(events) if i % 10 == 3]
    events = [e for i, e in enumerate(events) if i % 10 != 3] + late
    duplicates = events[::10]
    too_late = [
        {"tenantId": tenant, "metric": "calls", "customerRef": CUSTOMERS[i % 7], "quantity": 1.5,
         "ts": iso(hour0 - 60 * HOUR + 60 * i), "idempotencyKey": f"old{i}"}
        for i in range(30)
    ]  # fmt: skip
    return events + duplicates, too_late


async def late_in_ledger(settings: Settings, tenant: str, n: int) -> bool:
    import psycopg

    async with await psycopg.AsyncConnection.connect(settings.database_url.value) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM events WHERE tenant_id = %s AND outcome = 'late'", (tenant,)
        )
        row = await cur.fetchone()
        return bool(row and row[0] >= n)


async def counter_changes(settings: Settings, tenant: str) -> int:
    """Counter changes the pipeline published (the highest seq of every counter, summed)."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(settings.database_url.value) as conn:
        cur = await conn.execute(
            "SELECT coalesce(sum(latest_seq), 0) FROM stripe_pushes WHERE tenant_id = %s", (tenant,)
        )
        row = await cur.fetchone()
        return int(row[0]) if row else 0


def oracle(events: list[dict[str, Any]]) -> dict[tuple[str, str, int], int]:
    """What Stripe's hour summaries must hold: per (metric, customer, hour) the whole-unit target of the
    exact totals (fractions carried within the calendar month), the count, or the newest value."""
    seen: set[str] = set()
    exact: dict[tuple[str, str], dict[int, int]] = defaultdict(Counter)
    newest: dict[tuple[str, str, int], tuple[str, int]] = {}
    for e in events:
        if e["idempotencyKey"] in seen:
            continue
        seen.add(e["idempotencyKey"])
        ts = datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).timestamp()
        hour = int(ts) - int(ts) % HOUR
        micros = round(e["quantity"] * 1_000_000)
        key = (e["metric"], e["customerRef"])
        if e["metric"] == "seats":
            if ((*key, hour)) not in newest or newest[(*key, hour)][0] < e["ts"]:
                newest[(*key, hour)] = (e["ts"], micros)
        else:
            exact[key][hour] += micros if e["metric"] == "calls" else 1_000_000
    out: dict[tuple[str, str, int], int] = {}
    for (metric, customer), hours in exact.items():
        by_period: dict[datetime, list[int]] = defaultdict(list)
        for hour in sorted(hours):
            by_period[holding(datetime.fromtimestamp(hour, tz=UTC)).start].append(hour)
        for period_hours in by_period.values():
            wanted = targets(METERS[metric][0], [hours[h] for h in period_hours])
            out.update({(metric, customer, h): t for h, t in zip(period_hours, wanted, strict=True)})
    for (metric, customer, hour), (_ts, micros) in newest.items():
        out[(metric, customer, hour)] = targets("last", [micros])[0]
    return {k: v for k, v in out.items() if v}


@pytest_asyncio.fixture
async def stripe_env(stack: Settings, tmp_path: Path) -> AsyncIterator[tuple[Settings, EmulatorState, str]]:
    settings = isolated_settings(stack, tmp_path, partitions=4)
    await create_topics_of(settings.kafka, settings.app_id, settings.topic_prefix, 4)
    state = EmulatorState(async_validation=True)  # Stripe test mode's 25 operations/s, for everyone
    server = TestServer(create_emulator(state), host="127.0.0.1", port=free_port())
    await server.start_server()
    base = str(server.make_url("")).rstrip("/")
    settings = settings.with_overrides(
        stripe_api_base=base,
        stripe_api_key=Secret("sk_test_exactly_once"),
        stripe_webhook_secret=Secret(WEBHOOK_SECRET),
        stripe_calls_per_second=WORKER_BUDGET,
        reconcile_settle_seconds=0,
    )
    yield settings, state, base
    await server.close()
    await delete_topics_of(settings.kafka, settings.app_id, settings.topic_prefix)


def summaries_in_process(
    state: EmulatorState, meters: dict[str, str], ids: dict[str, str], start: int, end: int
) -> dict[tuple[str, str, int], int]:
    held: dict[tuple[str, str, int], int] = {}
    for metric, meter_id in meters.items():
        for customer, cus in ids.items():
            query = {"customer": cus, "start_time": str(start), "end_time": str(end),
                     "value_grouping_window": "hour", "limit": "100"}  # fmt: skip
            for s in state.event_summaries(meter_id, query, "/")["data"]:
                if round(float(s["aggregated_value"] or 0)):
                    held[(metric, customer, int(s["start_time"]))] = round(float(s["aggregated_value"]))
    return held


async def read_within_budget(
    client: stripe.StripeClient, meter_id: str, params: MeterEventSummaryListParams
) -> stripe.ListObject[stripe.billing.MeterEventSummary]:
    """The test's reads share the account's 25 operations/s with the workers: wait out a 429."""
    while True:
        try:
            return await client.v1.billing.meters.event_summaries.list_async(meter_id, params)
        except stripe.RateLimitError:
            await asyncio.sleep(0.5)


async def hourly_summaries(
    base: str, meters: dict[str, str], ids: dict[str, str], start: int, end: int
) -> dict[tuple[str, str, int], int]:
    """Stripe's own view through the real client: hour summaries per metric, customer and hour."""
    client = stripe.StripeClient(
        "sk_test_reader",
        base_addresses={"api": base},
        max_network_retries=10,
        http_client=stripe.AIOHTTPClient(),
    )
    held: dict[tuple[str, str, int], int] = {}
    for metric, meter_id in meters.items():
        for customer, cus in ids.items():
            params: MeterEventSummaryListParams = {"customer": cus, "start_time": start, "end_time": end,
                                      "value_grouping_window": "hour", "limit": 100}  # fmt: skip
            while True:
                page = await read_within_budget(client, meter_id, params)
                for s in page.data:
                    if round(float(s.aggregated_value or 0)):
                        held[(metric, customer, int(s.start_time))] = round(float(s.aggregated_value))
                if not page.has_more:
                    break
                params = {**params, "starting_after": page.data[-1].id}
    return held


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("stripe_api", ["v1", "v2"])
async def test_three_workers_through_stripes_bad_day_end_with_hourly_summaries_equal_to_the_oracle(
    stripe_env: tuple[Settings, EmulatorState, str], tmp_path: Path, stripe_api: str
) -> None:
    """On v1, and on the v2 meter event stream (STRIPEMETER_STRIPE_API=v2: the bad day strikes its
    requests, 100 events each)."""
    settings, state, base = stripe_env
    settings = settings.with_overrides(stripe_api=stripe_api)
    send_path = "/v1/billing/meter_events" if stripe_api == "v1" else STREAM_PATH
    tenant = f"x1-{uuid.uuid4().hex[:6]}"
    rng = random.Random(round_seed(20))
    started = time.monotonic()

    def phase(what: str) -> None:
        print(f"[exactly-once] {time.monotonic() - started:6.1f} s  {what}", flush=True)

    api = TestClient(TestServer(create_api(settings)))
    await api.start_server()
    workers: list[WorkerProcess] = []

    def start(name: str) -> WorkerProcess:
        worker = WorkerProcess(
            settings,
            tmp_path / f"{name}.log",
            state_dir=tmp_path / f"state-{name}",
            worker_web_port=free_port(),
        ).start()
        workers.append(worker)
        return worker

    try:
        # Stripe: three meters, 50 customers (5 of them mapped to ids Stripe does not know)
        meters, ids = {}, {}
        for metric, (aggregation, formula, customer_key, value_key) in METERS.items():
            meter = state.create_meter(
                {"display_name": metric, "event_name": f"{tenant}_{metric}",
                 "default_aggregation": {"formula": formula},
                 "customer_mapping": {"type": "by_id", "event_payload_key": customer_key},
                 "value_settings": {"event_payload_key": value_key}}
            )  # fmt: skip
            meters[metric] = meter["id"]
            put = await api.put(
                f"/v1/mappings/{tenant}/{metric}",
                json={"stripeMeterEventName": meter["event_name"], "aggregation": aggregation},
            )
            assert put.status == 200, await put.text()
            assert (await put.json())["meterCheck"]["status"] == "ok"
        for customer in CUSTOMERS:
            real = state.create_customer({"email": f"{customer}@example.com"})["id"]
            ids[customer] = real
            mapped = f"cus_ghost_{tenant}_{customer}" if customer in GHOSTS else real
            put = await api.put(f"/v1/customers/{tenant}/{customer}", json={"stripeCustomerId": mapped})
            assert put.status == 200
        webhook = f"http://127.0.0.1:{api.server.port}/v1/stripe/webhook"
        state.set_webhook(webhook, WEBHOOK_SECRET)
        # Stripe's bad day, from the first push to the last
        state.faults.update(
            {"server_error_rate": 0.08, "landed_server_error_rate": 0.04, "lost_response_rate": 0.05,
             "path_prefix": send_path}
        )  # fmt: skip

        events, too_late = workload(tenant, time.time(), rng)
        thirds = [events[i * len(events) // 3 : (i + 1) * len(events) // 3] for i in range(3)]
        for name in ("w1", "w2"):
            start(name)
        for w in workers:
            w.wait_ready(timeout=180)

        async def send(batch: list[dict[str, Any]]) -> None:
            for i in range(0, len(batch), 250):
                await produce(settings, [batch[i : i + 250]])
                await asyncio.sleep(0.05)

        phase("two workers ready; sending the first third")
        await send(thirds[0])
        start("w3").wait_ready(timeout=180)  # a worker joins mid-stream
        phase("w3 joined; the second third")
        await send(thirds[1])
        workers[1].kill9()  # w2 dies between a Stripe call and recording its answer, maybe
        state.faults.update({"rate_limit": 20})  # and a burst of 429s
        phase("w2 killed with -9; the last third")
        await send(thirds[2])
        workers[0].stop()  # w1 leaves
        await send(too_late)
        start("w2b").wait_ready(timeout=180)  # a replacement for the killed one
        phase("w1 stopped, w2b started; waiting for Stripe's reports on the ghosts")

        # the webhook parked the ghosts' counters: Stripe reported every one of their events dropped
        async def ghosts_parked() -> bool:
            body = await (
                await api.get("/v1/stripe/pushes", params={"tenantId": tenant, "status": "parked"})
            ).json()
            return {c["customerRef"] for c in body["counters"]} >= set(GHOSTS)

        await eventually(ghosts_parked, timeout=240, what="the ghosts' counters parked by Stripe's reports")
        reports = len(state.error_reports)
        phase(f"{reports} error reports; fixing the ghosts' mappings, replaying the too-late events")
        # fix the mappings: the parked counters are pushed again
        for customer in GHOSTS:
            assert await remap(api, f"/v1/customers/{tenant}/{customer}", ids[customer]) > 0
        # the too-late events, counted by a replay once the ledger has them all
        await eventually(lambda: late_in_ledger(settings, tenant, 30), timeout=120, what="too-late events")
        replay = await api.post(
            "/v1/replay",
            json={"tenantId": tenant, "metrics": ["calls"], "since": "-P4D", "until": "now", "mode": "apply"},
        )
        assert (await replay.json())["eventsReplayed"] == 30

        expected = oracle(events + too_late)
        start_s = min(h for _m, _c, h in expected)
        end_s = max(h for _m, _c, h in expected) + HOUR
        seen: dict[str, Any] = {}

        async def parity() -> bool:
            # polled in the emulator's process (reads through HTTP would take the workers' budget)
            seen["held"] = summaries_in_process(state, meters, ids, start_s, end_s)
            if seen["held"] != expected:
                await asyncio.sleep(2)
                return False
            return True

        phase("waiting for Stripe's hourly summaries to equal the oracle")
        try:
            await eventually(parity, timeout=600, what="Stripe's hourly summaries equal to the oracle")
            # and once more as any client of Stripe reads them, through the real client
            seen["held"] = await hourly_summaries(base, meters, ids, start_s, end_s)
            assert seen["held"] == expected
        except AssertionError:
            held = seen.get("held", {})
            wrong = {
                k: (held.get(k), expected.get(k))
                for k in set(held) | set(expected)
                if held.get(k) != expected.get(k)
            }
            logs = "\n".join(w.log_tail(15) for w in workers)
            raise AssertionError(
                f"{len(wrong)} hours differ (Stripe, oracle): {sorted(wrong.items())[:20]}\n{logs}"
            ) from None
        seconds = time.monotonic() - started

        calls = state.requests["POST /v1/billing/meter_events"]
        changes = await counter_changes(settings, tenant)
        print(
            f"\n[exactly-once] {len(events) + len(too_late)} events sent ({len(events) // 11} duplicates,"
            f" {len(too_late)} too late), {len(CUSTOMERS)} customers x 3 metrics, {len(expected)} hours in"
            f" Stripe; workers 2, +1, one killed, one stopped, +1; parity {seconds:.0f} s after the start;"
            f" {len(state.error_reports)} events dropped by Stripe and reported ({reports} before the fix);"
            f" {calls} meter event calls for {changes}"
            f" counter changes ({calls / changes:.2f} a change); all requests {sum(state.requests.values())}"
        )
        for w in workers:
            assert "idempotency_error" not in w.log_path.read_text(errors="replace")
    finally:
        for w in workers:
            w.stop()
        await api.close()


async def remap(
    api: TestClient[web.Request, web.Application], path: str, stripe_customer: str, timeout: float = 120
) -> int:
    """PUT a customer's corrected mapping as a client must: come back after ``Retry-After`` while another
    change holds the streams (409 ``busy``), and while the old pair still holds usage Stripe has not
    reported on yet (409 ``usage_left_behind``: its error reports arrive asynchronously, in batches).
    Returns ``countersRetried``."""
    deadline = time.monotonic() + timeout
    while True:
        put = await api.put(path, json={"stripeCustomerId": stripe_customer})
        body = await put.json()
        if put.status == 200:
            return int(body["countersRetried"])
        code = body.get("error", {}).get("code")
        assert put.status == 409 and code in ("busy", "usage_left_behind"), (put.status, body)
        assert time.monotonic() < deadline, f"{path} still refused after {timeout}s: {body}"
        await asyncio.sleep(float(put.headers.get("Retry-After", "1")))
