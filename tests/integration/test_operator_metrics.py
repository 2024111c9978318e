"""Metrics are operator data: the API's /metrics (no key) names no tenant and no customer and does not
tell unknown key ids from wrong secrets; the operator listener serves the drift gauges, capped."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import psycopg
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from stripemeter.adapters.postgres import reconciliation as db
from stripemeter.api.app import create_app as create_api
from stripemeter.api.operator_metrics import create_operator_app
from stripemeter.domain import periods
from stripemeter.domain.config import Settings
from stripemeter.services import api_keys as keys
from tests.integration.harness import ApiClient


@pytest_asyncio.fixture
async def apis(env: Settings) -> AsyncIterator[tuple[ApiClient, ApiClient]]:
    """The API (keys on) and its operator listener."""
    public = TestClient(TestServer(create_api(env.with_overrides(auth_enabled=True))))
    await public.start_server()
    operator = TestClient(TestServer(create_operator_app(public.app)))
    await operator.start_server()
    yield public, operator
    await operator.close()
    await public.close()


async def record_drift(
    settings: Settings, tenant: str, period_name: str, items: list[tuple[str, float, int]]
) -> None:
    """A finished reconciliation run of ``tenant`` whose items (customer, diff_pct, diff_abs) drift."""
    now = settings.clock.utc()
    period = periods.period(period_name)
    run_id = f"test-{uuid.uuid4().hex}"
    async with await psycopg.AsyncConnection.connect(settings.database_url.value, autocommit=True) as conn:
        await db.start_run(conn, run_id, tenant, "requests", period.name, "api", 0.005)
        rows = [
            db.ItemRow(run_id, tenant, "requests", customer, period.name, period.start, period.end,
                       100 + diff, 100, diff, pct, "drift", "replay", 0, [], [], now)
            for customer, pct, diff in items
        ]  # fmt: skip
        await db.finish_run(conn, run_id, rows, {"drift": len(rows)})


async def forget(settings: Settings, tenants: list[str]) -> None:
    async with await psycopg.AsyncConnection.connect(settings.database_url.value, autocommit=True) as conn:
        await conn.execute("DELETE FROM reconciliation_latest WHERE tenant_id = ANY(%s)", (tenants,))
        await conn.execute("DELETE FROM reconciliation_runs WHERE tenant_id = ANY(%s)", (tenants,))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_default_metrics_name_no_tenant_and_no_customer(
    env: Settings, apis: tuple[ApiClient, ApiClient]
) -> None:
    public, operator = apis
    tag = uuid.uuid4().hex[:6]
    tenants = [f"om-a-{tag}", f"om-b-{tag}"]
    customers = {t: [f"cust-{t}-{i}" for i in range(3)] for t in tenants}
    period = periods.current_name(env.clock.utc())
    try:
        for tenant in tenants:
            await record_drift(
                env, tenant, period, [(c, 0.25, 40 + i) for i, c in enumerate(customers[tenant])]
            )
            token = await keys.create(env, tenant, "ingest,read", None)
            ts = (env.clock.utc() - timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
            events = [
                {"tenantId": tenant, "metric": "requests", "customerRef": c, "quantity": 2, "ts": ts}
                for c in customers[tenant]
            ]
            ingested = await public.post("/v1/events/ingest", json={"events": events}, headers=bearer(token))
            assert ingested.status == 202
            summary = f"/v1/reconciliation/summary?tenantId={tenant}&metric=requests"
            assert (await public.get(summary, headers=bearer(token))).status == 200

        scrape = await public.get("/metrics")
        assert scrape.status == 200
        text = await scrape.text()
        named = [name for t in tenants for name in (t, *customers[t]) if name in text]
        assert named == [], f"the API's /metrics names {named}"
        assert not re.search(r'\b(tenant|customer|customer_ref|period)="', text)
        assert "reconciliation_diff_pct" not in text and "reconciliation_diff_abs" not in text
        off = re.search(r'stripemeter_reconciliation_items_off_parity\{status="drift"\} (\S+)', text)
        assert off is not None and float(off.group(1)) >= 6  # counted, not named

        # the operator listener names them, for Prometheus and whoever the operator lets in
        detailed = await (await operator.get("/metrics")).text()
        for tenant in tenants:
            for i, customer in enumerate(customers[tenant]):
                labels = f'customer="{customer}",metric="requests",period="{period}",tenant="{tenant}"'
                assert f"reconciliation_diff_abs{{{labels}}} {40.0 + i}" in detailed
        assert "http_requests_total" in detailed  # and every public series too
    finally:
        await forget(env, tenants)


async def test_each_drift_gauge_keeps_only_the_worst_items(env: Settings) -> None:
    """Label sets per family are capped: the worst items by each gauge's own value stay."""
    tag = uuid.uuid4().hex[:6]
    tenant = f"om-c-{tag}"
    settings = env.with_overrides(operator_metrics_max_series=2)
    api = TestClient(TestServer(create_api(settings)))
    await api.start_server()
    operator = TestClient(TestServer(create_operator_app(api.app)))
    await operator.start_server()
    try:
        await record_drift(
            env,
            tenant,
            periods.current_name(env.clock.utc()),
            [(f"c{i}", 0.5 + i / 100, 10**12 + i) for i in range(5)],
        )
        text = await (await operator.get("/metrics")).text()
        pct = re.findall(r"^reconciliation_diff_pct\{.*\} (\S+)$", text, re.M)
        abs_ = re.findall(r"^reconciliation_diff_abs\{.*\} (\S+)$", text, re.M)
        assert len(pct) == 2 and len(abs_) == 2
        async with await psycopg.AsyncConnection.connect(env.database_url.value) as conn:
            cur = await conn.execute(
                "SELECT max(diff_pct), max(abs(diff_abs)), count(*) FROM reconciliation_latest"
                " WHERE status <> 'parity'"
            )
            row = await cur.fetchone()
        assert row is not None
        worst_pct, worst_abs, total = float(row[0]), float(row[1]), int(row[2])
        assert max(float(v) for v in pct) == worst_pct
        assert max(float(v) for v in abs_) == worst_abs == 10**12 + 4
        for family in ("reconciliation_diff_pct", "reconciliation_diff_abs"):
            left = f'stripemeter_operator_series_left_out{{family="{family}"}} {float(total - 2)}'
            assert left in text
    finally:
        await operator.close()
        await api.close()
        await forget(env, [tenant])


async def test_auth_failures_do_not_tell_unknown_key_ids_from_wrong_secrets(
    env: Settings, apis: tuple[ApiClient, ApiClient]
) -> None:
    public, operator = apis
    tenant = f"om-d-{uuid.uuid4().hex[:6]}"
    token = await keys.create(env, tenant, "read", None)
    url = f"/v1/watermarks?tenantId={tenant}&metric=m"

    async def scrape() -> str:
        return await (await public.get("/metrics")).text()

    def invalid(text: str) -> float:
        found = re.search(r'stripemeter_api_auth_failures_total\{reason="invalid_key"\} (\S+)', text)
        return float(found.group(1)) if found else 0.0

    before = await scrape()
    wrong_secret = await public.get(url, headers=bearer(token[:-3] + "zzz"))
    unknown_id = await public.get(url, headers=bearer("smk_" + uuid.uuid4().hex[:12] + "_secret"))
    assert wrong_secret.status == unknown_id.status == 401
    assert await wrong_secret.json() == await unknown_id.json()
    after = await scrape()
    assert invalid(after) - invalid(before) == 2
    assert "unknown_key" not in after and "wrong_secret" not in after
    # lookups by result (found / not_found) would tell the same: operator data
    assert "stripemeter_api_key_lookups_total" not in after
    assert "stripemeter_api_key_cache_entries" not in after
    detailed = await (await operator.get("/metrics")).text()
    assert 'stripemeter_api_key_lookups_total{result="not_found"}' in detailed


async def test_unusual_methods_and_unknown_paths_add_no_label_sets(apis: tuple[ApiClient, ApiClient]) -> None:
    """Label values come from small fixed sets: WebDAV-style methods (which the HTTP parser takes) are
    one label value, unknown paths another."""
    public, _operator = apis
    for method in ("PROPFIND", "MKCOL", "TRACE", "LOCK", "SEARCH"):
        await public.request(method, f"/no/such/{uuid.uuid4().hex}")
    text = await (await public.get("/metrics")).text()
    methods = set(re.findall(r'^http_requests_total\{method="([^"]+)"', text, re.M))
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}
    assert 'method="other",route="unmatched"' in text
    assert "/no/such/" not in text
