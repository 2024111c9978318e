"""API keys, scopes, tenant isolation on every /v1 route, the rate limits and the size limits."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY

from stripemeter.adapters.postgres import api_keys
from stripemeter.adapters.postgres.invoices import Heard, record_event
from stripemeter.api.app import create_app as create_api
from stripemeter.api.appkeys import KEY_CACHE
from stripemeter.api.limits import KEY_CACHE_SIZE, MISS_CACHE_SIZE, KeyCache
from stripemeter.domain.auth import required_scope, split_token
from stripemeter.domain.config import Settings
from stripemeter.services import api_keys as keys
from tests.integration.harness import ApiClient


@pytest_asyncio.fixture
async def secured(env: Settings) -> AsyncIterator[ApiClient]:
    client = TestClient(
        TestServer(create_api(env.with_overrides(auth_enabled=True, rate_limit_per_second=1000)))
    )
    await client.start_server()
    yield client
    await client.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_requests_without_a_valid_key_are_refused(env: Settings, secured: ApiClient) -> None:
    tenant = f"sa-{uuid.uuid4().hex[:6]}"
    token = await keys.create(env, tenant, "read", "test")
    ok = await secured.get(f"/v1/watermarks?tenantId={tenant}&metric=m", headers=bearer(token))
    assert ok.status == 200
    for headers in ({}, {"Authorization": "Basic x"}, bearer("smk_nothing"), bearer(token[:-2] + "xx")):
        response = await secured.get(f"/v1/watermarks?tenantId={tenant}&metric=m", headers=headers)
        assert response.status == 401, headers
        assert (await response.json())["error"]["code"] == "unauthorized"
        parts = split_token(token)
        assert parts is not None and parts[1] not in await response.text()  # the secret (it may hold "_")
    revoked = await keys.create(env, tenant, "read", "to revoke")
    assert await keys.revoke(env, revoked.split("_")[1])
    assert (
        await secured.get(f"/v1/watermarks?tenantId={tenant}&metric=m", headers=bearer(revoked))
    ).status == 401
    # health and metrics stay open for probes and Prometheus
    assert (await secured.get("/health/live")).status == 200
    assert (await secured.get("/metrics")).status == 200


async def test_scopes_limit_what_a_key_does(env: Settings, secured: ApiClient) -> None:
    tenant = f"sb-{uuid.uuid4().hex[:6]}"
    reader = bearer(await keys.create(env, tenant, "read", None))
    ingester = bearer(await keys.create(env, tenant, "ingest", None))
    event = {"tenantId": tenant, "metric": "m", "customerRef": "c", "quantity": 1,
             "ts": datetime.now(UTC).isoformat().replace("+00:00", "Z")}  # fmt: skip
    refused = await secured.post("/v1/events/ingest", json={"events": [event]}, headers=reader)
    assert refused.status == 403 and "'ingest' scope" in (await refused.json())["error"]["message"]
    assert (await secured.post("/v1/events/ingest", json={"events": [event]}, headers=ingester)).status == 202
    assert (await secured.get(f"/v1/events?tenantId={tenant}", headers=ingester)).status == 403
    mapping = {"stripeMeterEventName": "x", "aggregation": "sum"}
    assert (await secured.put(f"/v1/mappings/{tenant}/m", json=mapping, headers=reader)).status == 403


async def test_each_write_needs_its_own_scope_and_a_read_key_writes_nothing(
    env: Settings, secured: ApiClient
) -> None:
    """Every write route of a tenant's own data, tried with a ``read`` key: 403 naming the scope it needs
    (as ``required_scope`` says); the ``replay`` and ``reconcile`` scopes, granted alone, open their route
    and nothing else."""
    tenant = f"sw-{uuid.uuid4().hex[:6]}"
    reader = bearer(await keys.create(env, tenant, "read", None))
    writes = [(m, p, b) for m, p, b in walk(tenant, tenant) if m != "GET"]
    assert len(writes) >= 10
    for method, path, body in writes:
        response = await secured.request(method, path, json=body, headers=reader)
        needed = required_scope(method, path.split("?")[0])
        assert response.status == 403, (method, path, response.status)
        assert f"'{needed}' scope" in (await response.json())["error"]["message"], (method, path)
    for scope, route in (("replay", "/v1/replay"), ("reconcile", "/v1/reconciliation/run")):
        holder = bearer(await keys.create(env, tenant, scope, None))
        for method, path, body in writes:
            response = await secured.request(method, path, json=body, headers=holder)
            if path == route:
                assert response.status not in (401, 403), (scope, path, await response.text())
            else:
                assert response.status == 403, (scope, method, path, response.status)


def walk(a: str, b: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    """Every /v1 route, called by a key of tenant ``a`` about tenant ``b``."""
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    event = {"tenantId": b, "metric": "m", "customerRef": "c", "quantity": 1, "ts": now}
    return [
        ("POST", "/v1/events/ingest", {"events": [event]}),
        ("GET", f"/v1/events?tenantId={b}", None),
        ("GET", f"/v1/watermarks?tenantId={b}&metric=m", None),
        ("GET", f"/v1/usage/history?tenantId={b}&metric=m&customerRef=c", None),
        ("PUT", f"/v1/mappings/{b}/m", {"stripeMeterEventName": "x", "aggregation": "sum"}),
        ("GET", f"/v1/mappings/{b}", None),
        ("PUT", f"/v1/customers/{b}/c", {"stripeCustomerId": "cus_x"}),
        ("DELETE", f"/v1/mappings/{b}/m", None),
        ("DELETE", f"/v1/customers/{b}/c", None),
        ("GET", f"/v1/customers/{b}", None),
        ("GET", f"/v1/tenants/{b}/meters", None),
        ("PUT", f"/v1/tenants/{b}/meters/x", None),
        ("DELETE", f"/v1/tenants/{b}/meters/x", None),
        ("GET", f"/v1/stripe/pushes?tenantId={b}", None),
        ("GET", f"/v1/reconciliation/summary?tenantId={b}&metric=m", None),
        ("POST", "/v1/reconciliation/run", {"tenantId": b}),
        ("POST", "/v1/replay", {"tenantId": b, "metrics": ["m"], "since": "-PT1H", "until": "now"}),
        ("GET", "/v1/replay/{replayId}", None),
        ("POST", "/v1/adjustments", {**event, "delta": 1, "reason": "x"}),
        ("GET", f"/v1/adjustments?tenantId={b}", None),
        ("GET", f"/v1/invoices?tenantId={b}", None),
        ("GET", "/v1/invoices/{invoiceId}", None),
    ]


async def test_a_key_of_tenant_a_never_reaches_tenant_b_on_any_route(
    env: Settings, secured: ApiClient
) -> None:
    a, b = f"ta-{uuid.uuid4().hex[:6]}", f"tb-{uuid.uuid4().hex[:6]}"
    key_a = bearer(await keys.create(env, a, "admin", None))
    key_b = bearer(await keys.create(env, b, "admin", None))
    replay = await secured.post(
        "/v1/replay", json={"tenantId": b, "metrics": ["m"], "since": "-PT1H", "until": "now"}, headers=key_b
    )
    replay_id = (
        (await replay.json()).get("replayId", "rpl_missing") if replay.status == 200 else "rpl_missing"
    )
    invoice_id = f"in_{b}"  # an invoice of tenant b, as the guard records it
    async with await psycopg.AsyncConnection.connect(env.database_url.value, autocommit=True) as conn:
        await record_event(conn, Heard(invoice_id, "cus_b", "draft", "invoice.created"), datetime.now(UTC))
        await conn.execute("UPDATE invoices SET tenant_id = %s WHERE invoice_id = %s", (b, invoice_id))
    routes = walk(a, b)
    templates = {
        r.resource.canonical
        for r in secured.app.router.routes()
        if r.resource and r.method != "HEAD" and r.resource.canonical.startswith("/v1/")
    }
    walked = {path.split("?")[0] for _m, path, _b in routes} | {
        "/v1/mappings/{tenantId}/{metric}",
        "/v1/mappings/{tenantId}",
        "/v1/customers/{tenantId}/{customerRef}",
        "/v1/customers/{tenantId}",
        "/v1/tenants/{tenantId}/meters",
        "/v1/tenants/{tenantId}/meters/{eventName}",
    }
    # Stripe's webhook belongs to no tenant: its deliveries carry Stripe's signature, not an API key,
    # and an API key alone gets nothing from it
    assert templates <= walked | {"/v1/stripe/webhook"}, f"routes not walked: {templates - walked}"
    hook = await secured.post("/v1/stripe/webhook", data=b"{}", headers=key_a)
    assert hook.status in (400, 403), await hook.text()
    for method, path, body in routes:
        path = path.replace("{replayId}", replay_id).replace("{invoiceId}", invoice_id)
        response = await secured.request(method, path, json=body, headers=key_a)
        payload = await response.json()
        if path == "/v1/events/ingest":  # per-event results: the event is rejected, nothing accepted
            assert response.status == 202 and payload["accepted"] == 0
            assert payload["results"][0]["error"]["code"] == "tenant_forbidden"
        elif path.startswith(("/v1/replay/", "/v1/invoices/")):
            assert response.status == 404, (path, payload)  # another tenant's does not exist for A
        elif path.startswith("/v1/tenants/") and method != "GET":  # an operator's, whatever the tenant
            assert response.status == 403 and "'operator' scope" in payload["error"]["message"], payload
        else:
            assert response.status == 403, (method, path, payload)
            assert payload["error"]["code"] == "tenant_forbidden" and payload["error"]["field"] == "tenantId"


async def test_rate_limit_answers_429_with_retry_after(env: Settings) -> None:
    client = TestClient(
        TestServer(create_api(env.with_overrides(auth_enabled=False, rate_limit_per_second=2)))
    )
    await client.start_server()
    try:
        statuses = [(await client.get("/v1/watermarks?tenantId=rl&metric=m")).status for _ in range(4)]
        limited = await client.get("/v1/watermarks?tenantId=rl&metric=m")
        assert statuses == [200] * 4 and limited.status == 429
        assert int(limited.headers["Retry-After"]) >= 1
        assert (await client.get("/v1/watermarks?tenantId=other&metric=m")).status == 200  # per tenant
    finally:
        await client.close()


async def test_size_limits(api: ApiClient) -> None:
    too_big = await api.post("/v1/events/ingest", data=b"x" * (7 * 1024 * 1024))
    assert too_big.status == 413
    event = {"tenantId": "t", "metric": "m", "customerRef": "c", "quantity": 1, "ts": "2026-01-01T00:00:00Z"}
    too_many = await api.post("/v1/events/ingest", json={"events": [event] * 1001})
    assert too_many.status == 400 and (await too_many.json())["error"]["field"] == "events"


def made_up_key() -> str:
    return f"smk_{secrets.token_hex(6)}_{secrets.token_urlsafe(24)}"


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every key id the API looks up in PostgreSQL, in order."""
    seen: list[str] = []
    find = api_keys.find

    async def counting(conn: Any, key_id: str) -> Any:
        seen.append(key_id)
        return await find(conn, key_id)

    monkeypatch.setattr(api_keys, "find", counting)
    return seen


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


async def test_made_up_keys_cost_a_bounded_number_of_lookups_per_client(
    env: Settings, lookups: list[str]
) -> None:
    """One client floods /v1 with fresh made-up key ids, 50 at a time: after its 30 failed attempts
    it gets 429 with Retry-After and no PostgreSQL lookup at all, while another client's valid key
    keeps working. Behind a proxy (STRIPEMETER_API_PROXY_HOPS=1) the client is the X-Forwarded-For
    entry the proxy appended; what the caller writes left of it changes nothing."""
    settings = env.with_overrides(auth_enabled=True, rate_limit_per_second=10_000, api_proxy_hops=1)
    client = TestClient(TestServer(create_api(settings)))
    await client.start_server()
    tenant = f"sl-{uuid.uuid4().hex[:6]}"
    valid = bearer(await keys.create(env, tenant, "read", "auth load test"))
    path = f"/v1/watermarks?tenantId={tenant}&metric=m"
    throttled_before = sample("stripemeter_api_auth_throttled_total")
    try:

        async def attack(i: int) -> tuple[int, str | None]:
            headers = {**bearer(made_up_key()), "X-Forwarded-For": f"10.9.{i % 250}.1, 203.0.113.7"}
            response = await client.get(path, headers=headers)
            return response.status, response.headers.get("Retry-After")

        async def victim() -> int:
            headers = {**valid, "X-Forwarded-For": "198.51.100.9"}
            return (await client.get(path, headers=headers)).status

        started = time.monotonic()
        results: list[tuple[int, str | None]] = []
        victims: list[int] = []
        for wave in range(10):  # 500 made-up keys
            # the attacks' (status, Retry-After), then the victim's status
            gathered: list[Any] = await asyncio.gather(*(attack(wave * 50 + i) for i in range(50)), victim())
            *answers, answer = gathered
            results.extend(answers)
            victims.append(answer)
        elapsed = time.monotonic() - started
        statuses = [status for status, _ in results]
        # 30 at once plus one every 2 s of the run, never one per request
        bound = 30 + int(elapsed / 2) + 1
        attacker_lookups = [k for k in lookups if k != valid["Authorization"].split("_")[1]]
        assert len(attacker_lookups) <= bound, (len(attacker_lookups), elapsed)
        assert statuses.count(401) == len(attacker_lookups) and statuses.count(429) == 500 - len(
            attacker_lookups
        )
        assert all(retry is not None and int(retry) >= 1 for status, retry in results if status == 429)
        assert victims == [200] * 10  # another client with a valid key is never refused
        assert sample("stripemeter_api_auth_throttled_total") - throttled_before == statuses.count(429)
        print(f"500 made-up keys in {elapsed:.2f}s: {len(attacker_lookups)} lookups, "
              f"{statuses.count(429)} answered 429")  # fmt: skip

        # the throttled client cannot query, not even with a key id it has not tried yet
        before = len(lookups)
        retry = await client.get(path, headers={**bearer(made_up_key()), "X-Forwarded-For": "203.0.113.7"})
        assert retry.status == 429 and len(lookups) == before
        assert (await retry.json())["error"]["code"] == "rate_limited"
        # the cache stayed within its bounds
        cache = client.app[KEY_CACHE]
        assert isinstance(cache, KeyCache)
        assert len(cache.found) <= KEY_CACHE_SIZE and len(cache.missing) <= MISS_CACHE_SIZE
        assert len(cache.missing) == len(attacker_lookups) and not cache.inflight
    finally:
        await client.close()


async def test_without_a_proxy_setting_forwarded_for_is_not_trusted(
    env: Settings, lookups: list[str]
) -> None:
    """All from 127.0.0.1, whatever X-Forwarded-For claims; once throttled, the client's own key, found
    valid earlier, still works (looked up again when its 5 s, here 0.2 s, are over) but guesses do not."""
    client = TestClient(
        TestServer(create_api(env.with_overrides(auth_enabled=True, rate_limit_per_second=10_000)))
    )
    client.app[KEY_CACHE] = KeyCache(ttl=0.2)
    await client.start_server()
    tenant = f"sp-{uuid.uuid4().hex[:6]}"
    own = bearer(await keys.create(env, tenant, "read", None))
    path = f"/v1/events?tenantId={tenant}"
    try:
        assert (await client.get(path, headers=own)).status == 200
        statuses = []
        for i in range(40):  # each claims another address
            headers = {**bearer(made_up_key()), "X-Forwarded-For": f"192.0.2.{i}"}
            statuses.append((await client.get(path, headers=headers)).status)
        assert statuses == [401] * 30 + [429] * 10 and len(lookups) == 31
        await asyncio.sleep(0.3)
        assert (await client.get(path, headers=own)).status == 200 and len(lookups) == 32
        assert (await client.get(path, headers=bearer(made_up_key()))).status == 429 and len(lookups) == 32
        # a wrong secret for the known id is a failed attempt like any other
        wrong = bearer(own["Authorization"].removeprefix("Bearer ")[:-3] + "xyz")
        assert (await client.get(path, headers=wrong)).status == 429
    finally:
        await client.close()


async def test_a_repeated_made_up_key_is_looked_up_once_and_the_cache_stays_bounded(
    env: Settings, lookups: list[str]
) -> None:
    settings = env.with_overrides(
        auth_enabled=True, rate_limit_per_second=10_000, auth_failures_per_minute=1e6
    )
    client = TestClient(TestServer(create_api(settings)))
    client.app[KEY_CACHE] = KeyCache(size=4, miss_size=16)  # small bounds, same code
    await client.start_server()
    try:
        same = bearer(made_up_key())
        answers = await asyncio.gather(
            *(client.get("/v1/events?tenantId=x", headers=same) for _ in range(20))
        )
        assert {a.status for a in answers} == {401}
        assert len(lookups) == 1  # concurrent requests share one query; later ones hit the 30 s miss cache
        for _ in range(200):
            assert (await client.get("/v1/events?tenantId=x", headers=bearer(made_up_key()))).status == 401
        cache = client.app[KEY_CACHE]
        assert len(cache.missing) == 16 and len(lookups) == 201
        tenant = f"sc-{uuid.uuid4().hex[:6]}"
        for _ in range(6):  # more valid keys than the cache holds: each still works
            token = await keys.create(env, tenant, "read", None)
            assert (await client.get(f"/v1/events?tenantId={tenant}", headers=bearer(token))).status == 200
        assert len(cache.found) == 4
    finally:
        await client.close()
