"""Readiness runs real checks: PostgreSQL, Kafka, Stripe and worker heartbeats with consumer lag; the
worker publishes lag per group and partition in messages and seconds on its own /metrics."""

from __future__ import annotations

import urllib.request
import uuid
from datetime import UTC, datetime
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from stripemeter.api.app import create_app as create_api
from stripemeter.domain.config import Secret, Settings
from stripemeter.tools.local.procs import free_port
from tests.integration.client import eventually, produce
from tests.integration.harness import ApiClient, StartWorker


async def ready(api: ApiClient) -> tuple[int, dict[str, Any]]:
    response = await api.get("/health/ready")
    return response.status, await response.json()


async def test_without_a_worker_the_api_is_unhealthy_and_says_why(api: ApiClient) -> None:
    status, body = await ready(api)
    assert status == 503 and body["status"] == "unhealthy"
    assert body["checks"]["postgres"]["status"] == "ok" and body["checks"]["kafka"]["status"] == "ok"
    assert body["checks"]["workers"]["status"] == "down" and "heartbeat" in body["checks"]["workers"]["error"]
    assert body["checks"]["stripe"]["status"] == "disabled"


async def test_with_a_worker_ready_and_stripe_unreachable_it_is_degraded(
    env: Settings, start_worker: StartWorker, api: ApiClient
) -> None:
    worker = start_worker("w1")
    worker.wait_ready()

    async def healthy() -> bool:
        status, body = await ready(api)
        return status == 200 and body["status"] == "healthy" and body["checks"]["workers"]["ready"] == 1

    await eventually(healthy, timeout=30, what="a healthy API with one ready worker")
    # Stripe configured at an address nobody answers: degraded, not unhealthy (counting goes on)
    broken = env.with_overrides(
        stripe_api_base=f"http://127.0.0.1:{free_port()}", stripe_api_key=Secret("sk_test_x")
    )
    client = TestClient(TestServer(create_api(broken)))
    await client.start_server()
    try:
        status, body = await ready(client)
    finally:
        await client.close()
    assert (status, body["status"], body["checks"]["stripe"]["status"]) == (200, "degraded", "degraded")

    # lag per group and partition, in messages and in seconds, on the worker's own /metrics
    tenant = f"hl-{uuid.uuid4().hex[:6]}"
    ts = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    await produce(env, [{"tenantId": tenant, "metric": "m", "customerRef": "c", "quantity": 1, "ts": ts}])

    async def lag_published() -> bool:
        with urllib.request.urlopen(worker.web + "/metrics", timeout=5) as r:
            text = r.read().decode()
        return (
            f'stripemeter_consumer_lag_messages{{group="{env.app_id}-intake"' in text
            and f'stripemeter_consumer_lag_seconds{{group="{env.app_id}"' in text
        )

    await eventually(lag_published, timeout=40, what="lag gauges on the worker's /metrics")
    _status, body = await ready(api)
    assert f"{env.app_id}-intake" in body["checks"]["workers"]["lagSeconds"]
    worker.stop()
