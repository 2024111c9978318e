"""No tenant starves another: through the real stack (the API and a worker as processes, Kafka,
PostgreSQL, the Stripe emulator answering in 2 s), tenant A floods reconciliation runs and replay
dry-runs from 20 concurrent clients while tenant B reads its summary and a probe asks for readiness.
B's reads stay under 0.5 s at p99, readiness stays 200, and A is told to come back later (409 busy or
429, each with Retry-After) instead of queueing on PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import psycopg
import pytest
import stripe
from aiohttp.test_utils import TestClient, TestServer

from stripemeter.adapters.postgres import adjustments as adjustments_db
from stripemeter.adapters.stripe.budget import StripeBudget
from stripemeter.api.app import create_app as create_api
from stripemeter.api.appkeys import HEAVY, POOL
from stripemeter.domain.config import Settings, settings_env
from stripemeter.services import api_keys as keys
from stripemeter.services.reconciliation.build import build_reconciler
from stripemeter.services.reconciliation.schedule import open_periods, reconcile_tenant
from stripemeter.streams.worker.factories import stripe_writer
from stripemeter.tools.stripe_emulator import EmulatorState
from tests.integration.harness import ApiClient, StartWorker, free_port
from tests.integration.stripe_helpers import emulator_settings, setup_tenant

pytestmark = pytest.mark.exactly_once  # never rerun by CI; repeated by ./dev soak

FLOODERS = 20
FLOOD_SECONDS = 15.0
STRIPE_LATENCY = 2.0
REFUSED = {409, 429, 503}


class ApiProcess:
    """``stripemeter api`` as a child process: the load comes from this process, not its event loop."""

    def __init__(self, settings: Settings, log_path: Path):
        self.settings = settings
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.settings.api_port}"

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "stripemeter", "api"],
                env={**os.environ, **settings_env(self.settings)},
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def wait_live(self, session: aiohttp.ClientSession, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.log_path.read_text()
            try:
                async with session.get(self.base + "/health/live") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
        raise AssertionError(f"API not live after {timeout} s:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def api_process(env: Settings, tmp_path: Path, emulator: tuple[EmulatorState, str]) -> Iterator[ApiProcess]:
    settings = env.with_overrides(auth_enabled=True, api_port=free_port(), **emulator_settings(emulator[1]))
    process = ApiProcess(settings, tmp_path / "api.log")
    process.start()
    yield process
    process.stop()


def p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[98]


async def test_a_tenant_flooding_heavy_requests_leaves_other_tenants_and_readiness_alone(
    env: Settings,
    emulator: tuple[EmulatorState, str],
    start_worker: StartWorker,
    api_process: ApiProcess,
) -> None:
    state, base = emulator
    worker = start_worker(**emulator_settings(base))
    tag = uuid.uuid4().hex[:6]
    tenant_a, tenant_b = f"flood-a-{tag}", f"calm-b-{tag}"
    key_a = await keys.create(env, tenant_a, "admin", "flooding tenant")
    key_b = await keys.create(env, tenant_b, "admin", "calm tenant")
    as_a = {"Authorization": f"Bearer {key_a}"}
    as_b = {"Authorization": f"Bearer {key_b}"}
    as_operator = {"Authorization": f"Bearer {await keys.create(env, '*', 'operator', 'grants meters')}"}
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await api_process.wait_live(session)
        worker.wait_ready()
        api = api_process.base
        for tenant, headers in ((tenant_a, as_a), (tenant_b, as_b)):
            event_name = f"req_{uuid.uuid4().hex[:8]}"
            state.create_meter(
                {"display_name": "r", "event_name": event_name, "default_aggregation": {"formula": "sum"}}
            )
            grant = f"{api}/v1/tenants/{tenant}/meters/{event_name}"
            async with session.put(grant, headers=as_operator) as r:
                assert r.status == 200, await r.text()
            mapping = {"stripeMeterEventName": event_name, "aggregation": "sum"}
            url = f"{api}/v1/mappings/{tenant}/requests"
            async with session.put(url, json=mapping, headers=headers) as r:
                assert r.status == 200, await r.text()
        state.faults.update({"latency": STRIPE_LATENCY})

        summary = f"{api}/v1/reconciliation/summary?tenantId={tenant_b}&metric=requests"
        run = {"tenantId": tenant_a, "metric": "requests"}
        replay = {"tenantId": tenant_a, "metrics": ["requests"], "since": "-PT24H", "mode": "dry-run"}
        stop = asyncio.Event()
        answers: Counter[tuple[str, int]] = Counter()
        without_retry_after: list[tuple[str, int]] = []

        async def flood(n: int) -> None:
            """One of A's clients: back-to-back heavy requests; refused, it tries again 0.1 s later."""
            path, body = ("/v1/reconciliation/run", run) if n % 2 else ("/v1/replay", replay)
            while not stop.is_set():
                async with session.post(api + path, json=body, headers=as_a) as r:
                    await r.read()
                    answers[(path, r.status)] += 1
                    if r.status in REFUSED and "Retry-After" not in r.headers:
                        without_retry_after.append((path, r.status))
                    if r.status != 200:
                        await asyncio.sleep(0.1)

        read_seconds: list[float] = []
        read_statuses: Counter[int] = Counter()

        async def read_b() -> None:
            while not stop.is_set():
                started = time.perf_counter()
                async with session.get(summary, headers=as_b) as r:
                    await r.read()
                    read_statuses[r.status] += 1
                read_seconds.append(time.perf_counter() - started)
                await asyncio.sleep(0.05)

        ready_statuses: Counter[int] = Counter()

        async def probe() -> None:
            while not stop.is_set():
                async with session.get(api + "/health/ready") as r:
                    await r.read()
                    ready_statuses[r.status] += 1
                await asyncio.sleep(0.5)

        tasks = [asyncio.create_task(flood(n)) for n in range(FLOODERS)]
        await asyncio.sleep(1.0)  # the flood is on before B starts to measure
        tasks += [asyncio.create_task(read_b()), asyncio.create_task(probe())]
        await asyncio.sleep(FLOOD_SECONDS)
        stop.set()
        await asyncio.gather(*tasks)

    print(
        f"B's summary reads: {len(read_seconds)}, p50 {statistics.median(read_seconds):.3f} s,"
        f" p99 {p99(read_seconds):.3f} s, max {max(read_seconds):.3f} s; statuses {dict(read_statuses)};"
        f" readiness {dict(ready_statuses)}; A's answers {dict(answers)}"
    )
    assert read_statuses.keys() == {200}
    assert len(read_seconds) >= 100
    assert p99(read_seconds) < 0.5
    assert ready_statuses.keys() == {200}
    # A's work still gets done, one at a time, and the rest is told when to come back
    assert answers[("/v1/reconciliation/run", 200)] >= 1
    assert answers[("/v1/replay", 200)] >= 1
    assert not without_retry_after
    assert {status for (_path, status) in answers} <= {200} | REFUSED


# --- the pieces: tried locks, the pool's limits, Stripe's timeout --------------------------------------


async def no_publish(records: list[bytes]) -> None:
    pass


@asynccontextmanager
async def lock_held(settings: Settings, name: str) -> AsyncIterator[None]:
    """Another session (another API process, an operator) holds the advisory lock ``name``."""
    async with await psycopg.AsyncConnection.connect(settings.database_url.value, autocommit=True) as conn:
        await conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (name,))
        yield
        await conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (name,))


async def assert_busy(response: aiohttp.ClientResponse) -> None:
    assert response.status == 409, await response.text()
    assert (await response.json())["error"]["code"] == "busy"
    assert int(response.headers["Retry-After"]) >= 1


async def test_a_replay_reconciliation_or_adjustment_already_running_answers_busy_at_once(
    env: Settings, emulator: tuple[EmulatorState, str], stripe_api: ApiClient
) -> None:
    state, _base = emulator
    tenant = f"busy-{uuid.uuid4().hex[:6]}"
    await setup_tenant(stripe_api, state, tenant, ["c1"])
    async with lock_held(env, f"stripemeter-reconcile:{tenant}"):
        await assert_busy(await stripe_api.post("/v1/reconciliation/run", json={"tenantId": tenant}))
    replay = {"tenantId": tenant, "metrics": ["requests"], "since": "-PT1H", "mode": "dry-run"}
    async with lock_held(env, f"stripemeter-replay:{tenant}"):
        await assert_busy(await stripe_api.post("/v1/replay", json=replay))
    key = "retry-1"
    adjustment_id = "adj_" + hashlib.sha256(f"{tenant}\x1f{key}".encode()).hexdigest()[:24]
    body = {"tenantId": tenant, "metric": "requests", "customerRef": "c1", "ts": "2026-11-20T14:00:00Z",
            "delta": 1, "reason": "test"}  # fmt: skip
    async with lock_held(env, adjustments_db.lock_name(adjustment_id)):
        response = await stripe_api.post("/v1/adjustments", json=body, headers={"Idempotency-Key": key})
        await assert_busy(response)
    # a configuration change finds the tenant's (or the Stripe customer's) change in progress
    async with lock_held(env, f"stripemeter-config:tenant:{tenant}"):
        await assert_busy(
            await stripe_api.put(f"/v1/customers/{tenant}/c9", json={"stripeCustomerId": "cus_9"})
        )
        await assert_busy(await stripe_api.put(f"/v1/tenants/{tenant}/meters/requests_2"))
    async with lock_held(env, "stripemeter-config:stripe:cus_9"):
        await assert_busy(
            await stripe_api.put(f"/v1/customers/{tenant}/c9", json={"stripeCustomerId": "cus_9"})
        )
    # the locks were tried: the waiting requests held no place (and free ones run as before)
    assert stripe_api.app[HEAVY].running() == 0
    assert (await stripe_api.post("/v1/replay", json=replay)).status == 200
    assert (await stripe_api.post("/v1/reconciliation/run", json={"tenantId": tenant})).status == 200


async def test_the_schedule_skips_a_busy_tenant_and_reconciles_it_next_time(
    env: Settings,
    emulator: tuple[EmulatorState, str],
    stripe_api: ApiClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    state, base = emulator
    tenant = f"sched-{uuid.uuid4().hex[:6]}"
    await setup_tenant(stripe_api, state, tenant, ["c1"])
    reconciler = build_reconciler(env.with_overrides(**emulator_settings(base)), no_publish)
    now = env.clock.utc()
    async with await psycopg.AsyncConnection.connect(env.database_url.value, autocommit=True) as conn:
        async with lock_held(env, f"stripemeter-reconcile:{tenant}"):
            caplog.set_level(logging.INFO, logger="stripemeter.services.reconciliation.schedule")
            assert await reconcile_tenant(conn, reconciler, tenant, now) == []
        assert f"tenant {tenant} is being reconciled already; skipped" in caplog.text
        assert await reconcile_tenant(conn, reconciler, tenant, now) == await open_periods(
            conn, tenant, now, env.invoice_grace_seconds
        )


async def test_the_api_pool_has_its_size_wait_limit_and_statement_timeout(env: Settings) -> None:
    settings = env.with_overrides(
        db_pool_size=2, heavy_requests_total=1, db_pool_timeout_seconds=0.5, db_statement_timeout_seconds=0.25
    )
    client = TestClient(TestServer(create_api(settings)))
    await client.start_server()
    try:
        pool = client.app[POOL]
        assert pool.max_size == 2
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT current_setting('statement_timeout')")
            assert await cur.fetchone() == ("250ms",)
            with pytest.raises(psycopg.errors.QueryCanceled):
                await conn.execute("SELECT pg_sleep(2)")
        tenant = f"pool-{uuid.uuid4().hex[:6]}"
        summary = f"/v1/reconciliation/summary?tenantId={tenant}&metric=requests"
        async with pool.connection(), pool.connection():  # every connection busy
            started = time.monotonic()
            response = await client.get(summary)
            waited = time.monotonic() - started
            assert response.status == 503 and response.headers["Retry-After"] == "1"
            assert (await response.json())["error"]["code"] == "database_busy"
            assert 0.4 < waited < 5  # the wait limit, not the pool's default of 30 s
            ready = await (await client.get("/health/ready")).json()
            assert ready["checks"]["postgres"] == {"status": "ok"}  # readiness has its own connection
        assert (await client.get(summary)).status == 200
    finally:
        await client.close()


async def test_every_stripe_client_gives_up_after_the_stripe_timeout(
    env: Settings, emulator: tuple[EmulatorState, str]
) -> None:
    state, base = emulator
    settings = env.with_overrides(**emulator_settings(base), stripe_timeout_seconds=0.5)
    state.faults.update({"latency": 5.0})
    clients = {
        "reconciler": build_reconciler(settings, no_publish).reader.client,
        "writer": stripe_writer(settings, StripeBudget(100)).client,
    }
    for name, client in clients.items():
        started = time.monotonic()
        with pytest.raises(stripe.APIConnectionError):
            await client.v1.billing.meters.list_async({"limit": 1})
        assert time.monotonic() - started < 3, name  # not the 5 s Stripe takes, nor the SDK's 80 s
