"""Ingest, validation to the dead-letter topic, dedupe, lateness and the read endpoints, end to end."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from stripemeter.domain.config import Settings
from stripemeter.schemas.topics import TopicNames
from tests.integration.client import eventually, produce, read_topic
from tests.integration.harness import ApiClient, StartWorker

NOW = datetime.now(UTC).replace(microsecond=0)


def ts(delta: timedelta = timedelta()) -> str:
    return (NOW + delta).isoformat().replace("+00:00", "Z")


def ev(
    tenant: str, customer: str = "acme", quantity: float = 1, when: str | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "tenantId": tenant,
        "metric": "requests",
        "customerRef": customer,
        "quantity": quantity,
        "ts": when or ts(),
        **extra,
    }


async def history_total(
    api: ApiClient, tenant: str, customer: str = "acme", metric: str = "requests"
) -> float:
    response = await api.get(
        "/v1/usage/history",
        params={
            "tenantId": tenant,
            "metric": metric,
            "customerRef": customer,
            "since": ts(timedelta(days=-5)),
        },
    )
    total: float = (await response.json())["total"]
    return total


async def wait_total(api: ApiClient, tenant: str, expected: float, customer: str = "acme") -> None:
    async def reached() -> bool:
        return await history_total(api, tenant, customer) == expected

    await eventually(reached, what=f"total {expected} for {tenant}/{customer}")


async def test_ingest_answers_per_event_in_order_and_counts_once(
    env: Settings, start_worker: StartWorker, api: ApiClient
) -> None:
    start_worker().wait_ready()
    tenant = f"in-{uuid.uuid4().hex[:6]}"
    body = {
        "events": [
            ev(tenant, quantity=2, idempotencyKey="a"),
            ev(tenant, quantity=-1),
            ev(tenant, quantity=3),  # no key: derived
            {"tenantId": tenant},
        ]
    }
    response = await api.post("/v1/events/ingest", json=body)
    assert response.status == 202
    result = await response.json()
    assert (result["accepted"], result["rejected"]) == (2, 2)
    statuses = [(r["index"], r["status"]) for r in result["results"]]
    assert statuses == [(0, "accepted"), (1, "rejected"), (2, "accepted"), (3, "rejected")]
    assert result["results"][1]["error"]["field"] == "quantity"
    assert result["results"][3]["error"]["code"] == "missing_field"
    derived = result["results"][2]["idempotencyKey"]
    assert derived.startswith("drv_")
    # the client retries the same body: nothing is counted twice
    assert (await api.post("/v1/events/ingest", json=body)).status == 202
    await wait_total(api, tenant, 5)

    async def ledger_has_duplicates() -> bool:
        page = await (await api.get("/v1/events", params={"tenantId": tenant})).json()
        return sorted(e["outcome"] for e in page["events"]) == [
            "counted",
            "counted",
            "duplicate",
            "duplicate",
        ]

    await eventually(ledger_has_duplicates, what="counted and duplicate rows in the ledger")


async def test_ingest_rejects_malformed_bodies(api: ApiClient) -> None:
    for payload, field in (
        (b"nope", "body"),
        (b"[]", "body"),
        (b'{"events": []}', "events"),
        (orjson.dumps({"events": [{}] * 1001}), "events"),
    ):
        response = await api.post("/v1/events/ingest", data=payload)
        assert response.status == 400, payload[:20]
        assert (await response.json())["error"]["field"] == field
    response = await api.post("/v1/events/ingest", data=b"x" * (7 * 1024 * 1024))
    assert response.status == 413


async def test_hostile_inputs_go_to_the_dead_letter_topic_and_counting_goes_on(
    env: Settings,
    start_worker: StartWorker,
    api: ApiClient,
) -> None:
    start_worker().wait_ready()
    tenant = f"dlq-{uuid.uuid4().hex[:6]}"
    hostile = [
        b"not json",
        b"\xff\xfe\xfd binary",
        b'"just a string"',
        b"[1, 2]",
        b"{" * 50_000,
        orjson.dumps(ev(tenant, quantity=float("inf")) | {"quantity": None}),
        b'{"tenantId": "'
        + tenant.encode()
        + b'", "metric": "requests", "customerRef": "x", "quantity": 1e400, "ts": "'
        + ts().encode()
        + b'"}',
        orjson.dumps(ev(tenant, quantity=0.1234567)),
        orjson.dumps(ev(tenant, when="2026-11-20T14:03:11")),
        orjson.dumps(ev(tenant, when=ts(timedelta(hours=2)))),
        orjson.dumps(ev(tenant, meta={"x": "y" * 5000})),
        orjson.dumps(ev("bad tenant!")),
        b'{"tenantId": "' + tenant.encode() + b'", "pad": "' + b"z" * (3 * 1024 * 1024) + b'"}',
    ]
    await produce(env, hostile, raw=True)
    await produce(env, [ev(tenant, quantity=7, idempotencyKey="after-garbage")])
    await wait_total(api, tenant, 7)
    dlq = await read_topic(env, TopicNames(env.topic_prefix, env.app_id).dlq, expect=len(hostile) + 1)
    records = [orjson.loads(m.value) for m in dlq]
    codes = [r["error"]["code"] for r in records]
    assert len(records) == len(hostile) + 1  # "[1, 2]" holds two bad events
    assert codes.count("not_json") >= 3 and "too_large" in codes and "ts_in_future" in codes
    binary = next(r for r in records if r.get("rawEncoding") == "base64")
    assert binary["error"]["code"] == "not_json"
    fields = {r["error"].get("field") for r in records}
    assert {"quantity", "ts", "meta", "tenantId"} <= fields
    assert all({"topic", "partition", "offset", "raw"} <= r.keys() for r in records)


async def test_late_within_window_counts_beyond_goes_to_usage_late(
    env: Settings, start_worker: StartWorker, api: ApiClient
) -> None:
    start_worker().wait_ready()
    tenant = f"late-{uuid.uuid4().hex[:6]}"
    response = await api.put(
        f"/v1/mappings/{tenant}/requests",
        json={
            "stripeMeterEventName": "api_requests",
            "aggregation": "sum",
            "latenessSeconds": 3 * 3600,
        },
    )
    assert response.status == 200
    await produce(env, [ev(tenant, quantity=1, idempotencyKey="anchor")])
    await wait_total(api, tenant, 1)  # the mapping reached the meter before the anchor (read your writes)
    await produce(
        env,
        [
            [
                ev(tenant, quantity=10, when=ts(timedelta(hours=-2)), idempotencyKey="late-ok"),
                ev(tenant, quantity=100, when=ts(timedelta(hours=-5)), idempotencyKey="too-late"),
            ]
        ],
    )
    await wait_total(api, tenant, 11)
    late = await read_topic(env, TopicNames(env.topic_prefix, env.app_id).late, expect=1)
    record = orjson.loads(late[0].value)
    assert (record["idempotencyKey"], record["lateness"]) == ("too-late", 3 * 3600)
    assert "watermark" in record
    marks = await (await api.get("/v1/watermarks", params={"tenantId": tenant, "metric": "requests"})).json()
    assert marks["watermarks"][0]["customerRef"] == "acme"
    assert marks["watermarks"][0]["latenessSeconds"] == 3 * 3600

    async def outcomes() -> bool:
        page = await (await api.get("/v1/events", params={"tenantId": tenant, "limit": 2})).json()
        if page["nextCursor"] is None:
            return False
        rest = await (
            await api.get("/v1/events", params={"tenantId": tenant, "cursor": page["nextCursor"]})
        ).json()
        seen = [e["outcome"] for e in page["events"] + rest["events"]]
        return sorted(seen) == ["counted", "counted", "late"]

    await eventually(outcomes, what="ledger pages with counted and late events")


async def test_mappings_round_trip_and_name_bad_fields(api: ApiClient) -> None:
    tenant = f"map-{uuid.uuid4().hex[:6]}"
    bad = await api.put(
        f"/v1/mappings/{tenant}/requests", json={"stripeMeterEventName": "x", "aggregation": "max"}
    )
    assert (bad.status, (await bad.json())["error"]["field"]) == (400, "aggregation")
    ok = await api.put(f"/v1/customers/{tenant}/acme", json={"stripeCustomerId": f"cus_123_{tenant}"})
    assert ok.status == 200
    listed = await (await api.get(f"/v1/customers/{tenant}")).json()
    assert [c["stripeCustomerId"] for c in listed["customers"]] == [f"cus_123_{tenant}"]
