"""Heavy requests are admitted, not queued (api/heavy.py): over a tenant's cap 429, over the cap of all
tenants 503, each with Retry-After; a finished request frees its place, a failed one too."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from stripemeter.api.app import error_middleware
from stripemeter.api.appkeys import HEAVY, SETTINGS
from stripemeter.api.heavy import heavy
from stripemeter.domain.concurrency import ConcurrencyLimit
from stripemeter.domain.config import Settings

Client = TestClient[web.Request, web.Application]


class Gate:
    """Requests that entered, and the event that lets them finish."""

    def __init__(self) -> None:
        self.entered = 0
        self.release = asyncio.Event()


@pytest.fixture
async def client_and_gate() -> AsyncIterator[tuple[Client, Gate]]:
    gate = Gate()

    async def work(request: web.Request) -> web.Response:
        async with heavy(request, request.match_info["tenant"]):
            gate.entered += 1
            if request.query.get("fail"):
                raise RuntimeError("the work failed")
            await gate.release.wait()
        return web.Response(text="done")

    app = web.Application(middlewares=[error_middleware])
    settings = Settings(heavy_requests_per_tenant=2, heavy_requests_total=3)
    app[SETTINGS] = settings
    app[HEAVY] = ConcurrencyLimit(settings.heavy_requests_per_tenant, settings.heavy_requests_total)
    app.router.add_post("/{tenant}", work)
    client = TestClient(TestServer(app))
    await client.start_server()
    yield client, gate
    await client.close()


async def _entered(gate: Gate, n: int) -> None:
    while gate.entered < n:
        await asyncio.sleep(0)


async def test_over_the_caps_requests_are_refused_at_once_with_retry_after(
    client_and_gate: tuple[Client, Gate],
) -> None:
    client, gate = client_and_gate
    running = [asyncio.create_task(client.post("/a")) for _ in range(2)]
    await _entered(gate, 2)
    over_tenant = await client.post("/a")
    assert over_tenant.status == 429 and over_tenant.headers["Retry-After"] == "2"
    error = (await over_tenant.json())["error"]
    assert error["code"] == "too_many_heavy_requests" and "tenantId" in error["message"]
    running.append(asyncio.create_task(client.post("/b")))  # another tenant still gets in
    await _entered(gate, 3)
    over_total = await client.post("/c")
    assert over_total.status == 503 and over_total.headers["Retry-After"] == "2"
    assert (await over_total.json())["error"]["code"] == "overloaded"
    gate.release.set()
    assert [r.status for r in await asyncio.gather(*running)] == [200, 200, 200]
    assert client.app[HEAVY].running() == 0
    assert (await client.post("/a")).status == 200


async def test_a_failed_request_frees_its_place(client_and_gate: tuple[Client, Gate]) -> None:
    client, _gate = client_and_gate
    for _ in range(3):
        assert (await client.post("/a?fail=1")).status == 500
    assert client.app[HEAVY].running() == 0
