"""Readiness runs real checks: PostgreSQL, Kafka, Stripe and worker heartbeats with consumer lag; only
the API's own Kafka producer decides whether the pod takes traffic (ingest needs nothing else), the
rest is reported. The worker publishes lag per group and partition in messages and seconds on its own
/metrics."""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from stripemeter.api import health
from stripemeter.api.app import create_app as create_api
from stripemeter.domain.config import Secret, Settings
from stripemeter.tools.local.procs import free_port
from tests.integration.client import eventually, produce
from tests.integration.harness import ApiClient, StartWorker


async def ready(api: ApiClient) -> tuple[int, dict[str, Any]]:
    response = await api.get("/health/ready")
    return response.status, await response.json()


async def test_without_a_worker_the_api_stays_ready_and_says_why(api: ApiClient) -> None:
    """No worker heartbeat: events wait in Kafka, so the API keeps taking them (200, degraded)."""
    status, body = await ready(api)
    assert status == 200 and body["status"] == "degraded"
    assert body["checks"]["postgres"]["status"] == "ok" and body["checks"]["kafka"]["status"] == "ok"
    assert body["checks"]["workers"]["status"] == "down" and "heartbeat" in body["checks"]["workers"]["error"]
    assert body["checks"]["stripe"]["status"] == "disabled"


class TcpRelay:
    """A TCP relay to PostgreSQL that the test can cut: the API's database goes away while the shared
    PostgreSQL keeps running for every other test."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = free_port()
        self.open = True
        self.streams: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:  # refused, as a PostgreSQL that is down: the client sees the connection end
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.streams += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        """PostgreSQL unreachable from now on: open connections end, new ones are closed at once."""
        self.open = False
        for stream in self.streams:
            stream.close()

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@contextlib.asynccontextmanager
async def relayed_database(env: Settings) -> AsyncIterator[tuple[Settings, TcpRelay]]:
    url = env.database_url.value
    host_port = url.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    relay = TcpRelay(host, int(port))
    await relay.start()
    try:
        relayed = url.replace(f"@{host_port}/", f"@127.0.0.1:{relay.port}/")
        yield env.with_overrides(database_url=Secret(relayed)), relay
    finally:
        await relay.close()


async def test_readiness_keeps_ingest_up_while_postgresql_is_unreachable(env: Settings) -> None:
    """PostgreSQL goes away under a running API (and no worker runs): readiness stays 200 (degraded,
    naming PostgreSQL and the workers), answers inside its bound, and ingest still reaches Kafka."""
    async with relayed_database(env) as (settings, relay):
        client = TestClient(TestServer(create_api(settings)))
        await client.start_server()
        try:
            status, body = await ready(client)
            assert (status, body["checks"]["postgres"]["status"]) == (200, "ok")
            relay.cut()
            started = time.monotonic()
            status, body = await ready(client)
            took = time.monotonic() - started
            assert (status, body["status"]) == (200, "degraded"), body
            assert body["checks"]["postgres"]["status"] == "down"
            assert body["checks"]["workers"]["status"] == "down"
            assert body["checks"]["kafka"]["status"] == "ok"
            # every check runs at once, each bounded: within the probes' 5 s (deploy/k8s)
            assert took < health.TIMEOUT + 1.5, took
            ts = datetime.now(UTC).isoformat().replace("+00:00", "Z")
            event = {"tenantId": "hl-pg", "metric": "m", "customerRef": "c", "quantity": 1, "ts": ts}
            response = await client.post("/v1/events/ingest", json={"events": [event]})
            assert response.status == 202, await response.text()
        finally:
            await client.close()


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
