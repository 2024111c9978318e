"""Bounded work (issue 27, point 5): lateness at most 35 days, every list in pages through an index,
ingest keyed per customer."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime, timedelta
from importlib.resources import files
from typing import Any

import orjson
import psycopg
import pytest
from psycopg import sql

from stripemeter.adapters.postgres.adjustments import list_rows as adjustment_rows
from stripemeter.adapters.postgres.ledger_reads import events_query
from stripemeter.adapters.postgres.mappings import page_rows
from stripemeter.adapters.postgres.migrate import _log_notice, migrate
from stripemeter.adapters.postgres.push_listing import list_pushes
from stripemeter.adapters.postgres.replay import Scope, pending_late, stream_pending_late
from stripemeter.core.replay_plan import PendingFold, make_plan, plan_from
from stripemeter.domain.config import Settings
from stripemeter.domain.policy import MAX_LATENESS_SECONDS
from stripemeter.schemas.partitioning import partition_for
from stripemeter.schemas.topics import TopicNames
from tests.integration.client import read_topic
from tests.integration.harness import ApiClient, own_schema

NOW = datetime(2027, 3, 10, 12, 0, tzinfo=UTC)  # rows written straight into tables: any instant will do


async def test_lateness_over_35_days_is_refused_naming_the_field(api: ApiClient) -> None:
    tenant = f"lb-{uuid.uuid4().hex[:6]}"
    over = await api.put(
        f"/v1/mappings/{tenant}/m",
        json={"stripeMeterEventName": "x", "latenessSeconds": MAX_LATENESS_SECONDS + 1},
    )
    assert over.status == 400
    assert (await over.json())["error"]["field"] == "latenessSeconds"
    ok = await api.put(
        f"/v1/mappings/{tenant}/m",
        json={"stripeMeterEventName": "x", "latenessSeconds": MAX_LATENESS_SECONDS},
    )
    assert ok.status == 200 and (await ok.json())["latenessSeconds"] == MAX_LATENESS_SECONDS


def test_migration_0020_lowers_stored_lateness_under_a_new_version_and_says_so(
    env: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A mapping stored (before 0020) with 68 years of lateness: the migration lowers it to 35 days,
    gives it a new version (workers reload it), logs it, and the column refuses more from then on.
    Run inside a transaction that is rolled back, on the migrated schema with its CHECK dropped."""
    migration = files("stripemeter.schemas.contract").joinpath("migrations/0020_bounds.sql").read_text()
    tenant = f"lm-{uuid.uuid4().hex[:6]}"
    with psycopg.connect(env.database_url.value) as conn:
        conn.execute("ALTER TABLE metric_mappings DROP CONSTRAINT metric_mappings_lateness_bounded")
        for index in ("events_by_tenant_time", "events_by_metric_time", "stripe_pushes_by_tenant"):
            conn.execute(f"DROP INDEX {index}")
        conn.execute("DROP INDEX stripe_pushes_by_status")
        conn.execute("DROP INDEX adjustments_by_tenant")
        stored = conn.execute(
            "INSERT INTO metric_mappings (tenant_id, metric, stripe_meter_event_name, aggregation,"
            " lateness_seconds, version) VALUES"
            " (%s, 'old', 'e_old', 'sum', 2147483647, nextval('mapping_versions')),"
            " (%s, 'fine', 'e_fine', 'sum', 3600, nextval('mapping_versions')) RETURNING metric, version",
            (tenant, tenant),
        ).fetchall()
        versions: dict[str, int] = dict(stored)
        conn.add_notice_handler(_log_notice)
        with caplog.at_level("WARNING", logger="stripemeter.adapters.postgres.migrate"):
            conn.execute(migration)
        found = conn.execute(
            "SELECT metric, lateness_seconds, version FROM metric_mappings WHERE tenant_id = %s", (tenant,)
        ).fetchall()
        rows = {metric: (lateness, version) for metric, lateness, version in found}
        assert rows["old"][0] == MAX_LATENESS_SECONDS and rows["old"][1] > versions["old"]  # a new version
        assert rows["fine"] == (3600, versions["fine"])  # untouched
        assert f"{tenant}/old" in caplog.text and "2147483647" in caplog.text
        assert f"{tenant}/fine" not in caplog.text
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                "UPDATE metric_mappings SET lateness_seconds = %s WHERE tenant_id = %s",
                (MAX_LATENESS_SECONDS + 1, tenant),
            )
        conn.rollback()


async def _every(api: ApiClient, path: str, field: str, **query: Any) -> list[Any]:
    """Follow ``nextCursor`` with pages of 2; every page but the last is full."""
    items: list[Any] = []
    cursor = None
    while True:
        params = {**query, "limit": "2", **({"cursor": cursor} if cursor else {})}
        response = await api.get(path, params=params)
        assert response.status == 200, await response.text()
        body = await response.json()
        items.extend(body[field])
        cursor = body["nextCursor"]
        if cursor is None:
            assert len(body[field]) <= 2
            return items
        assert len(body[field]) == 2


async def test_every_list_endpoint_pages_with_limit_and_cursor(api: ApiClient, env: Settings) -> None:
    tenant = f"lp-{uuid.uuid4().hex[:6]}"
    customers = [f"c{i}" for i in range(5)]
    for i, customer in enumerate(customers):
        r = await api.put(f"/v1/mappings/{tenant}/m{i}", json={"stripeMeterEventName": f"{tenant}_e{i}"})
        assert r.status == 200, await r.text()
        r = await api.put(
            f"/v1/customers/{tenant}/{customer}", json={"stripeCustomerId": f"cus_{tenant}_{i}"}
        )
        assert r.status == 200, await r.text()
    async with await psycopg.AsyncConnection.connect(env.database_url.value, autocommit=True) as conn:
        for i, customer in enumerate(customers):
            await conn.execute(
                "INSERT INTO watermarks (tenant_id, metric, customer_ref, watermark)"
                " VALUES (%s, 'm', %s, %s)",
                (tenant, customer, NOW),
            )
            for hour in range(2):
                await conn.execute(
                    "INSERT INTO stripe_pushes (tenant_id, metric, customer_ref, bucket, latest_micros,"
                    " latest_seq, status) VALUES (%s, 'm', %s, %s, 1000000, 1, %s)",
                    (tenant, customer, NOW - timedelta(hours=hour), "synced" if hour else "waiting"),
                )
            await conn.execute(
                "INSERT INTO adjustments (adjustment_id, tenant_id, metric, customer_ref, bucket, ts,"
                " delta_micros, reason, target, created_at) VALUES (%s, %s, 'm', %s, %s, %s, 1, 'r',"
                " 'counter', %s)",
                (f"adj_{tenant}_{i}", tenant, customer, NOW, NOW, NOW - timedelta(seconds=i // 2)),
            )  # two share each created_at: the cursor breaks ties by id

    mappings = await _every(api, f"/v1/mappings/{tenant}", "mappings")
    assert [m["metric"] for m in mappings] == [f"m{i}" for i in range(5)]
    listed = await _every(api, f"/v1/customers/{tenant}", "customers")
    assert [c["customerRef"] for c in listed] == customers
    marks = await _every(api, "/v1/watermarks", "watermarks", tenantId=tenant, metric="m")
    assert [w["customerRef"] for w in marks] == customers
    pushes = await _every(api, "/v1/stripe/pushes", "counters", tenantId=tenant)
    keys = [(p["bucket"], p["customerRef"]) for p in pushes]
    assert len(keys) == 10 and len(set(keys)) == 10 and keys == sorted(keys, reverse=True)
    waiting = await _every(api, "/v1/stripe/pushes", "counters", tenantId=tenant, status="waiting")
    assert sorted(p["customerRef"] for p in waiting) == customers
    adjustments = await _every(api, "/v1/adjustments", "adjustments", tenantId=tenant)
    assert sorted(a["adjustmentId"] for a in adjustments) == sorted(f"adj_{tenant}_{i}" for i in range(5))
    assert [a["createdAt"] for a in adjustments] == sorted(
        (a["createdAt"] for a in adjustments), reverse=True
    )

    for path in (f"/v1/mappings/{tenant}", f"/v1/customers/{tenant}", "/v1/adjustments", "/v1/events"):
        bad = await api.get(path, params={"tenantId": tenant, "cursor": "bm90LWEtY3Vyc29y"})
        assert bad.status == 400 and (await bad.json())["error"]["field"] == "cursor", path
        over = await api.get(path, params={"tenantId": tenant, "limit": "1001"})
        assert over.status == 400 and (await over.json())["error"]["field"] == "limit", path


async def test_events_list_reads_an_index_range_not_the_whole_ledger(env: Settings) -> None:
    """GET /v1/events without a metric (and with one) on a tenant with 20,000 ledger rows: the plan
    walks an index in the page's order (no Sort of the tenant's rows). In a ledger of its own: the
    planner's estimates for the other partitions come from whatever rows earlier runs left in a shared
    database, and a partition it wrongly believes to hold a few of the tenant's rows gets a Sort."""
    tenant = f"le-{uuid.uuid4().hex[:6]}"
    with own_schema(env.database_url.value, "ledger_plan") as url:
        await asyncio.to_thread(migrate, url)
        await assert_the_page_walks_an_index(url, tenant)


async def assert_the_page_walks_an_index(url: str, tenant: str) -> None:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await conn.execute(
            "INSERT INTO events (source_topic, source_partition, source_offset, source_index, outcome,"
            " tenant_id, metric, customer_ref, quantity_micros, ts, idempotency_key, key_derived)"
            " SELECT %s, 0, n, 0, 'counted', %s, 'm' || (n %% 4), 'c' || (n %% 50), 1,"
            " %s - n * interval '1 s', 'k' || n, false FROM generate_series(1, 20000) AS n",
            (f"bounds-{tenant}", tenant, NOW),
        )
        await conn.execute("ANALYZE events")
        cur = await conn.execute(
            "SELECT DISTINCT tableoid::regclass::text FROM events WHERE tenant_id = %s", (tenant,)
        )
        [(holding,)] = await cur.fetchall()  # the ledger partition holding the tenant's rows
        after = (NOW - timedelta(seconds=100), f"bounds-{tenant}", 0, 100, 0)
        for metric, customer in [(None, None), ("m1", None)]:
            for cursor in (None, after):
                query, params = events_query(tenant, metric, customer, None, None, 101, cursor)
                cur = await conn.execute(b"EXPLAIN " + query.as_bytes(conn), params)
                plan = "\n".join(row[0] for row in await cur.fetchall())
                # which index the planner takes depends on the whole table's statistics (other tests'
                # rows too); what matters is that the page is read from one in its order
                assert "Index Scan" in plan or "Index Only Scan" in plan, plan
                assert re.search(r"Index Cond: .*tenant_id", plan), plan  # a range of the tenant's rows
                # no Sort node (a Merge Append of the partitions' index scans keeps their order), and
                # the partition holding the rows read through an index (empty ones may be scanned)
                assert not re.search(r"\bSort  \(", plan), plan
                assert f"Seq Scan on {holding} " not in plan, plan
        await conn.rollback()


async def test_ingest_spreads_one_tenants_events_by_customer(api: ApiClient, env: Settings) -> None:
    """One tenant, 12 customers: each usage.events message holds one customer's events, keyed
    ``tenantId:customerRef`` and in that key's partition, so the tenant's events use every partition."""
    tenant = f"lk-{uuid.uuid4().hex[:6]}"
    ts = datetime.now(UTC).replace(microsecond=0).isoformat()
    customers = [f"cust-{i}" for i in range(12)]
    events = [
        {
            "tenantId": tenant,
            "metric": "m",
            "customerRef": c,
            "quantity": 1,
            "ts": ts,
            "idempotencyKey": f"{c}-{n}",
        }
        for n in range(2)
        for c in customers
    ]
    response = await api.post("/v1/events/ingest", json={"events": events})
    assert response.status == 202 and (await response.json())["accepted"] == 24
    topic = TopicNames(env.topic_prefix, env.app_id).events
    records = await read_topic(env, topic, expect=12)
    assert len(records) == 12
    partitions = set()
    for record in records:
        held = orjson.loads(record.value)
        (customer,) = {e["customerRef"] for e in held}
        assert record.key == f"{tenant}:{customer}".encode()
        assert [e["idempotencyKey"] for e in held] == [f"{customer}-0", f"{customer}-1"]  # in order
        assert record.partition == partition_for(record.key.decode(), env.partitions)
        partitions.add(record.partition)
    assert partitions == set(range(env.partitions))


async def test_replay_streams_pending_late_events_in_pages_with_the_same_plan(env: Settings) -> None:
    """The replay's pending-late events stream from a server-side cursor, 3 rows a page here, folded
    one counter at a time: the plan equals make_plan over the whole window read at once (duplicate
    keys, a key the stream counted, ties of ts, several hours and customers)."""
    tenant = f"lr-{uuid.uuid4().hex[:6]}"
    rows = []
    for n in range(40):
        customer, hour = f"c{n % 3}", NOW - timedelta(hours=n % 4)
        rows.append((n, "late", customer, hour + timedelta(minutes=n % 2), f"k{n}"))
    rows += [(100, "late", "c0", NOW, "k0"), (101, "counted", "c1", NOW, "k1")]  # a twin; a counted key
    scope = Scope(tenant, ["m"], None, NOW - timedelta(days=1), NOW + timedelta(hours=1))
    async with await psycopg.AsyncConnection.connect(env.database_url.value, autocommit=True) as conn:
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO events (source_topic, source_partition, source_offset, source_index, outcome,"
                " tenant_id, metric, customer_ref, quantity_micros, ts, idempotency_key, key_derived)"
                " VALUES (%s, 0, %s, 0, %s, %s, 'm', %s, %s, %s, %s, false)",
                [(f"bounds-{tenant}", n, outcome, tenant, c, (n + 1) * 1_000_000, ts, key)
                 for n, outcome, c, ts, key in rows],
            )  # fmt: skip
        whole = await pending_late(conn, scope)
        assert len(whole) == 39  # k1 counted; k0's twin is one event
        for mode, aggregation in (("apply", "sum"), ("apply", "last"), ("dry-run", "count")):
            fold = PendingFold(tenant, keep_keys=mode == "apply")
            await stream_pending_late(conn, scope, fold.add, page=3)
            streamed = plan_from(fold.finish(), {"m": aggregation}, {})
            expected = make_plan(tenant, whole, {"m": aggregation}, {})
            assert streamed.changes == expected.changes and streamed.corrections == expected.corrections
            if mode == "apply":
                assert streamed.new == expected.new
        await conn.execute("DELETE FROM events WHERE source_topic = %s", (f"bounds-{tenant}",))


async def test_replay_folds_by_the_meters_utc_hour_whatever_the_sessions_time_zone(env: Settings) -> None:
    """In a session at +05:30 an hour truncated in the session's zone starts at :30 UTC: the fold
    must group by the UTC hour the meter keys its counters by."""
    tenant = f"tz-{uuid.uuid4().hex[:6]}"
    scope = Scope(tenant, ["m"], None, NOW - timedelta(days=1), NOW + timedelta(hours=1))
    async with await psycopg.AsyncConnection.connect(env.database_url.value, autocommit=True) as conn:
        await conn.execute("SET TIME ZONE 'Asia/Kolkata'")
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO events (source_topic, source_partition, source_offset, source_index, outcome,"
                " tenant_id, metric, customer_ref, quantity_micros, ts, idempotency_key, key_derived)"
                " VALUES (%s, 0, %s, 0, 'late', %s, 'm', 'c', 1000000, %s, %s, false)",
                [(f"bounds-{tenant}", n, tenant, NOW - timedelta(minutes=minutes), f"k{n}")
                 for n, minutes in enumerate((20, 40, 80))],
            )  # fmt: skip
        fold = PendingFold(tenant)
        await stream_pending_late(conn, scope, fold.add)
        buckets = {bucket: p.events for (_m, _c, bucket), p in fold.finish().items()}
        await conn.execute("DELETE FROM events WHERE source_topic = %s", (f"bounds-{tenant}",))
    assert buckets == {NOW - timedelta(hours=1): 2, NOW - timedelta(hours=2): 1}


class _Explaining:
    """A connection whose cursors EXPLAIN what an adapter executes: the adapter's own SQL is planned."""

    def __init__(self, conn: psycopg.AsyncConnection) -> None:
        self.conn = conn
        self.plans: list[str] = []

    def cursor(self, **kwargs: Any) -> _Explaining:
        return self

    async def execute(self, query: Any, params: Any = None) -> _Explaining:
        text = query.as_bytes(self.conn) if isinstance(query, sql.Composable) else query.encode()
        cur = await self.conn.execute(b"EXPLAIN " + text, params)
        self.plans.append("\n".join(row[0] for row in await cur.fetchall()))
        return self

    async def fetchall(self) -> list[Any]:
        return []


async def test_every_list_query_reads_an_index_range(env: Settings) -> None:
    """The pushes, adjustments and mappings pages (first and next) on 10,000 rows of one tenant among
    ten: each walks an index range in its order (no Seq Scan; a Sort only of one status' rows)."""
    async with await psycopg.AsyncConnection.connect(env.database_url.value) as conn:
        await conn.execute(
            "INSERT INTO stripe_pushes (tenant_id, metric, customer_ref, bucket, latest_micros, latest_seq,"
            " status) SELECT 'lq-t' || (n %% 10), 'm', 'c' || n, %s - (n %% 2000) * interval '1 hour', 1, 1,"
            " CASE WHEN n %% 50 = 0 THEN 'parked' ELSE 'synced' END FROM generate_series(1, 100000) n",
            (NOW,),
        )
        await conn.execute(
            "INSERT INTO adjustments (adjustment_id, tenant_id, metric, customer_ref, bucket, ts,"
            " delta_micros, reason, target, created_at) SELECT 'lq-a' || n, 'lq-t' || (n %% 10), 'm', 'c',"
            " %s, %s, 1, 'r', 'counter', %s - n * interval '1 s' FROM generate_series(1, 100000) n",
            (NOW, NOW, NOW),
        )
        await conn.execute(
            "INSERT INTO customer_mappings (tenant_id, customer_ref, stripe_customer_id)"
            " SELECT 'lq-t' || (n % 10), 'c' || n, 'cus_lq' || n FROM generate_series(1, 100000) n"
        )
        for table in ("stripe_pushes", "adjustments", "customer_mappings"):
            await conn.execute(f"ANALYZE {table}")
        tenant = "lq-t1"
        explaining = _Explaining(conn)
        fake: Any = explaining
        await list_pushes(fake, tenant, None, 101)
        await list_pushes(fake, tenant, None, 101, (NOW - timedelta(hours=5), "m", "c5"))
        await list_pushes(fake, tenant, "parked", 101, (NOW - timedelta(hours=5), "m", "c5"))
        await adjustment_rows(fake, tenant, None, None, 101)
        await adjustment_rows(fake, tenant, None, None, 101, (NOW - timedelta(seconds=500), "lq-a500"))
        await page_rows(fake, "customer_mappings", tenant, 101, None)
        await page_rows(fake, "customer_mappings", tenant, 101, "c5000")
        for plan in explaining.plans:
            assert "Seq Scan" not in plan and "Index" in plan, plan
            assert "Filter" not in plan, plan  # every condition bounds the index range
        for plan in explaining.plans[:2] + explaining.plans[3:]:
            assert "Sort" not in plan, plan
        await conn.rollback()


async def test_the_reconciliation_summary_pages_its_items_and_totals_them_all(
    api: ApiClient, env: Settings
) -> None:
    tenant = f"rs-{uuid.uuid4().hex[:6]}"
    statuses = ["parity", "within_epsilon", "parity", "drift", "parity"]
    async with await psycopg.AsyncConnection.connect(env.database_url.value, autocommit=True) as conn:
        for i, status in enumerate(statuses):
            await conn.execute(
                "INSERT INTO reconciliation_latest (run_id, tenant_id, metric, customer_ref, period,"
                " period_start, period_end, local, stripe, diff_abs, diff_pct, status, action, checked_at,"
                " in_flight, causes, hours)"
                " VALUES ('run_x', %s, 'm', %s, '2026-11', '2026-11-01', '2026-12-01', %s, %s, %s, 0.1, %s,"
                " 'none', %s, 0, '[]', '[]')",
                (tenant, f"c{i}", 10 * (i + 1), 10 * (i + 1) - i, i, status, NOW - timedelta(minutes=i)),
            )
    query = {"tenantId": tenant, "metric": "m", "period": "2026-11"}
    items = await _every(api, "/v1/reconciliation/summary", "items", **query)
    assert [i["customerRef"] for i in items] == ["c0", "c1", "c2", "c3", "c4"]
    first = await (await api.get("/v1/reconciliation/summary", params={**query, "limit": "2"})).json()
    assert first["itemCount"] == 5 and first["status"] == "drift"  # c3, on a later page
    assert (
        first["totals"]["local"] == 150
        and first["totals"]["stripe"] == 140
        and first["totals"]["diffAbs"] == 10
    )
    csv_text = await (await api.get("/v1/reconciliation/summary", params={**query, "format": "csv"})).text()
    assert len(csv_text.strip().splitlines()) == 1 + 5  # the header and every verdict


async def test_usage_history_answers_a_bounded_window(api: ApiClient) -> None:
    base = "/v1/usage/history?tenantId=t&metric=m&customerRef=c"
    ok = await api.get(f"{base}&since=2026-01-01T00:00:00Z&until=2026-04-01T00:00:00Z")
    assert ok.status == 200, await ok.text()
    too_long = await api.get(f"{base}&since=2026-01-01T00:00:00Z&until=2026-04-05T00:00:00Z")
    assert too_long.status == 400 and (await too_long.json())["error"]["field"] == "since"
    by_day = await api.get(f"{base}&since=2022-01-01T00:00:00Z&until=2026-12-01T00:00:00Z&granularity=day")
    assert by_day.status == 200, await by_day.text()
