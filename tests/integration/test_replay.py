"""Replay on the real broker: dry-run changes nothing anywhere; apply counts too-late events exactly
once (idempotent, safe to retry, safe while live events flow and across a kill -9); adjustments."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp.test_utils import TestClient
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError

from stripemeter.adapters.kafka.corrections import send_corrections
from stripemeter.adapters.postgres.mappings import MetricMapping, upsert_customer, upsert_metric
from stripemeter.adapters.postgres.reconciliation import late_events
from stripemeter.core.replay_window import Window, parse_window
from stripemeter.domain.config import Settings
from stripemeter.domain.periods import current_name
from stripemeter.schemas.corrections import Correction
from stripemeter.schemas.partitioning import keyed_routing_key, partition_for
from stripemeter.schemas.topics import TopicNames
from stripemeter.services.replayer import ReplayRequest, build_replayer
from tests.integration.client import caught_up, counters_of, eventually, outcomes_of, produce
from tests.integration.harness import ApiClient, StartWorker
from tests.integration.test_exactly_once import behind

HOUR_MS = 3_600_000


def now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def ev(tenant: str, customer: str, ts_ms: int, quantity: int, key: str) -> dict[str, Any]:
    ts = (
        datetime.fromtimestamp(ts_ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )
    return {"tenantId": tenant, "metric": "requests", "customerRef": customer, "quantity": quantity, "ts": ts,
            "idempotencyKey": key}  # fmt: skip


def oracle(events: list[dict[str, Any]]) -> Counter[tuple[str, int]]:
    """Per (customer, hour bucket) micros: every distinct idempotency key once, too-late ones included."""
    seen: set[str] = set()
    totals: Counter[tuple[str, int]] = Counter()
    for e in events:
        if e["idempotencyKey"] in seen:
            continue
        seen.add(e["idempotencyKey"])
        ts = int(datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).timestamp() * 1000)
        totals[(e["customerRef"], ts - ts % HOUR_MS)] += e["quantity"] * 1_000_000
    return totals


async def local(env: Settings, tenant: str) -> Counter[tuple[str, int]]:
    return Counter({(c, b): t for (_m, c, b), t in (await counters_of(env, tenant)).items()})


async def end_offsets(env: Settings, topics: list[str]) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=env.kafka_bootstrap_servers)
    await consumer.start()
    try:
        parts = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
        if not parts:
            await consumer.topics()
            parts = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
        offsets: dict[TopicPartition, int] = await consumer.end_offsets(parts)
        return offsets
    finally:
        await consumer.stop()


async def replayed_rows(env: Settings, tenant: str) -> int:
    async with await psycopg.AsyncConnection.connect(env.database_url.value) as conn:
        cur = await conn.execute("SELECT count(*) FROM replayed_keys WHERE tenant_id = %s", (tenant,))
        row = await cur.fetchone()
        return int(row[0]) if row else 0


def scenario(tenant: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Fresh usage (advances the watermarks), then too-late events 60 h old: some twice, one a
    duplicate of a fresh event's key."""
    now = now_ms()
    fresh = [ev(tenant, f"c{i % 3}", now - 60_000 * i, 1 + i % 4, f"f{i}") for i in range(60)]
    old = now - 60 * HOUR_MS
    late = [ev(tenant, f"c{i % 3}", old - 600_000 * (i % 7), 2 + i % 3, f"l{i}") for i in range(40)]
    late += late[:5]  # sent twice: counted once
    late.append(ev(tenant, "c0", old, 9, "f3"))  # key of a fresh event: a duplicate, never counted
    return fresh, late


async def replay(api: ApiClient, tenant: str, mode: str, **extra: Any) -> dict[str, Any]:
    body = {
        "tenantId": tenant,
        "metrics": ["requests"],
        "since": "-P4D",
        "until": "now",
        "mode": mode,
        **extra,
    }
    response = await api.post("/v1/replay", json=body)
    assert response.status == 200, await response.text()
    result: dict[str, Any] = await response.json()
    return result


async def test_dry_run_changes_nothing_and_apply_counts_too_late_events_exactly_once(
    env: Settings, start_worker: StartWorker, api: ApiClient
) -> None:
    tenant = f"rp-{uuid.uuid4().hex[:6]}"
    start_worker("w1").wait_ready()
    fresh, late = scenario(tenant)
    await produce(env, [fresh])
    await eventually(lambda: _outcome_at_least(env, tenant, "counted", 60), what="fresh usage counted")
    await produce(env, [late])
    await eventually(lambda: _outcome_at_least(env, tenant, "late", 45), what="too-late events in the ledger")
    await eventually(
        lambda: _equals(local(env, tenant), oracle(fresh)), what="every delta of the fresh usage"
    )
    names = TopicNames(env.topic_prefix, env.app_id)
    counters_before = await local(env, tenant)
    offsets_before = await end_offsets(env, [names.deltas, names.keyed])

    dry = await replay(api, tenant, "dry-run")
    distinct_late = sum(v for k, v in oracle(fresh + late).items()) - sum(oracle(fresh).values())
    assert dry["applied"] is False and dry["mode"] == "dry-run"
    assert dry["eventsScanned"] == 60 + 46 and dry["eventsReplayed"] == 40
    assert dry["totals"]["delta"] * 1_000_000 == distinct_late
    assert all(c["after"] - c["before"] == c["delta"] for c in dry["counters"])
    # ... and nothing changed anywhere: counters, topics, the ledger
    await eventually(lambda: caught_up(env), what="the pipeline caught up")
    assert await local(env, tenant) == counters_before
    assert await end_offsets(env, [names.deltas, names.keyed]) == offsets_before
    assert await replayed_rows(env, tenant) == 0

    applied = await replay(api, tenant, "apply")
    assert applied["applied"] is True and applied["totals"] == dry["totals"]
    # read your writes: the apply returns once the counters show it
    assert applied["visible"] is True
    expected = oracle(fresh + late)
    assert await local(env, tenant) == expected
    assert {c["period"] for c in applied["counters"]} == {p["name"] for p in applied["periods"]}
    assert sum(p["counters"] for p in applied["periods"]) == len(applied["counters"])
    assert await replayed_rows(env, tenant) == 40
    again = await replay(api, tenant, "apply")
    assert again["totals"]["delta"] == 0 and again["counters"] == []
    stored = await (await api.get(f"/v1/replay/{applied['replayId']}")).json()
    assert stored["status"] == "applied" and stored["totals"] == applied["totals"]
    await eventually(lambda: caught_up(env), what="the pipeline caught up")
    assert await local(env, tenant) == expected


@pytest.mark.exactly_once
async def test_apply_while_live_events_flow_and_a_kill_neither_loses_nor_double_counts(
    env: Settings, start_worker: StartWorker, api: ApiClient
) -> None:
    tenant = f"rl-{uuid.uuid4().hex[:6]}"
    worker = start_worker("w1", slot="main")
    worker.wait_ready()
    fresh, late = scenario(tenant)
    await produce(env, [fresh])
    await eventually(lambda: _outcome_at_least(env, tenant, "counted", 60), what="fresh usage counted")
    await produce(env, [late])
    await eventually(lambda: _outcome_at_least(env, tenant, "late", 45), what="too-late events in the ledger")
    now = now_ms()
    live = [ev(tenant, f"c{i % 3}", now - 1000 * (i % 300), 1, f"live{i}") for i in range(3000)]
    live += live[:200]  # duplicates while the replay runs

    async def feed() -> None:
        for i in range(0, len(live), 100):
            await produce(env, [live[i : i + 100]])
            await asyncio.sleep(0.05)

    feeding = asyncio.create_task(feed())
    await asyncio.sleep(0.5)
    # two applies at once: one does it; the other is told 409 busy (it runs while the first holds the
    # tenant's replay lock) or, if it came after, finds nothing left
    body = {"tenantId": tenant, "metrics": ["requests"], "since": "-P4D", "until": "now", "mode": "apply"}
    answers = await asyncio.gather(*(api.post("/v1/replay", json=body) for _ in range(2)))
    done = [await r.json() for r in answers if r.status == 200]
    busy = [r for r in answers if r.status == 409]
    assert len(done) + len(busy) == 2
    for refused in busy:
        assert refused.headers["Retry-After"] and (await refused.json())["error"]["code"] == "busy"
    assert sorted(d["eventsReplayed"] for d in done)[-1] == 40  # one of them did it
    assert sorted(d["eventsReplayed"] for d in done)[:-1] in ([], [0])
    worker.kill9()  # right after the apply: the corrections may or may not be checkpointed
    await feeding
    start_worker("w1", slot="main").wait_ready()
    expected = oracle(fresh + late + live)
    try:
        await eventually(
            lambda: _equals(local(env, tenant), expected), timeout=90, what="counters = ledger truth"
        )
    except AssertionError as exc:  # say which stage stopped, and what the counters miss
        got = await local(env, tenant)
        missing = {k: expected[k] - got.get(k, 0) for k in expected if expected[k] != got.get(k, 0)}
        raise AssertionError(
            f"{exc}; counters short by {missing}; groups behind: {await behind(env)}"
        ) from exc
    assert (await replay(api, tenant, "apply"))["totals"]["delta"] == 0


class FailingAfter:
    """A producer that sends ``sends`` messages and then fails: a broker gone in the middle of an apply."""

    def __init__(self, producer: AIOKafkaProducer, sends: int):
        self.producer = producer
        self.sends = sends
        self.partitions: list[int] = []  # of the messages sent

    async def partitions_for(self, topic: str) -> set[int]:
        partitions: set[int] = await self.producer.partitions_for(topic)
        return partitions

    async def send(self, topic: str, value: bytes, partition: int) -> Any:
        if len(self.partitions) >= self.sends:
            raise KafkaConnectionError("injected: the broker went away")
        self.partitions.append(partition)
        return await self.producer.send(topic, value, partition=partition)


def spread_tenant(prefix: str, partitions: int) -> str:
    """A tenant whose customers c0, c1, c2 are in more than one keyed partition."""
    while True:
        tenant = f"{prefix}-{uuid.uuid4().hex[:6]}"
        if len({partition_for(keyed_routing_key(tenant, f"c{i}"), partitions) for i in range(3)}) > 1:
            return tenant


async def test_an_apply_retried_after_a_partial_failure_and_a_new_arrival_counts_each_event_once(
    env: Settings, start_worker: StartWorker, api: ApiClient
) -> None:
    """An apply sends the corrections of one keyed partition, then fails before the other. A new
    too-late event then arrives for a counter whose correction was sent. The retry re-sends what the
    failed apply recorded (same ids, same events: the meter applies each once) and counts the new
    event with a correction of its own: every event once."""
    tenant = spread_tenant("rf", env.partitions)
    start_worker("w1").wait_ready()
    fresh, late = scenario(tenant)
    await produce(env, [fresh])
    await eventually(lambda: _outcome_at_least(env, tenant, "counted", 60), what="fresh usage counted")
    await produce(env, [late])
    await eventually(lambda: _outcome_at_least(env, tenant, "late", 45), what="too-late events in the ledger")
    window = parse_window("-P4D", "now", now_ms(), env.replay_max_window_seconds)
    request = ReplayRequest(tenant, ["requests"], None, window, "apply")
    # the 40 keys (5 of them sent twice): what the replay counts, one per key and customer
    waiting = await waiting_late(env, tenant, window)
    assert waiting == 40
    producer = AIOKafkaProducer(bootstrap_servers=env.kafka_bootstrap_servers, acks="all")
    await producer.start()
    failing = FailingAfter(producer, 1)
    try:
        async with await psycopg.AsyncConnection.connect(env.database_url.value, autocommit=True) as conn:
            with pytest.raises(KafkaConnectionError):
                await build_replayer(env, failing).run(conn, request)
        await producer.flush()  # what was sent before the failure reaches the meter
    finally:
        await producer.stop()
    assert len(failing.partitions) == 1
    assert await replayed_rows(env, tenant) == 40  # claimed by the recorded corrections
    counters = len({(e["customerRef"], _ms(e["ts"]) // HOUR_MS) for e in late[:40]})
    assert await correction_states(env, tenant) == {"recorded": counters}
    assert await waiting_late(env, tenant, window) == waiting  # the reconciler still names them as owed
    # the meter applied the corrections that were sent: those customers' too-late events count now
    in_sent = {c for c in ("c0", "c1", "c2") if partition_of(env, tenant, c) == failing.partitions[0]}
    full, only_fresh = oracle(fresh + late), oracle(fresh)
    partly = Counter({k: (full if k[0] in in_sent else only_fresh)[k] for k in full})
    await eventually(lambda: _equals(local(env, tenant), partly), what="the sent corrections applied")

    # a new too-late event for a counter whose correction was sent
    customer = sorted(in_sent)[0]
    hour_of = next(e for e in late if e["customerRef"] == customer)["ts"]
    new = ev(tenant, customer, _ms(hour_of), 7, "late-after-failure")
    await produce(env, [[new]])
    await eventually(lambda: _outcome_at_least(env, tenant, "late", 46), what="the new too-late event")

    dry = await replay(api, tenant, "dry-run")  # what the retry will do, changing nothing
    assert dry["eventsReplayed"] == 41 and sum(c.get("resent", 0) for c in dry["counters"]) == 40
    assert await replayed_rows(env, tenant) == 40

    retried = await replay(api, tenant, "apply")
    assert retried["applied"] is True and retried["visible"] is True
    assert retried["eventsReplayed"] == 41 and sum(c.get("resent", 0) for c in retried["counters"]) == 40
    expected = oracle(fresh + late + [new])
    assert await local(env, tenant) == expected
    assert await replayed_rows(env, tenant) == 41
    assert await correction_states(env, tenant) == {"sent": counters + 1}
    assert await waiting_late(env, tenant, window) == 0
    again = await replay(api, tenant, "apply")
    assert again["eventsReplayed"] == 0 and again["counters"] == []
    await eventually(lambda: caught_up(env), what="the pipeline caught up")
    assert await local(env, tenant) == expected


async def test_a_key_reused_by_two_customers_is_replayed_once_for_each(
    env: Settings, start_worker: StartWorker, api: ApiClient
) -> None:
    """A key is one event per (tenant, customer): a too-late event of one customer is owed whatever
    another customer of the tenant did with the same key (counted it, sent it late too, or had it
    counted by a replay). The reconciler names as waiting what the replay counts."""
    tenant = f"rk-{uuid.uuid4().hex[:6]}"
    start_worker("w1").wait_ready()
    now = now_ms()
    fresh = [ev(tenant, c, now - 60_000 * i, 1, f"f{c}{i}") for c in ("a", "b") for i in range(5)]
    fresh.append(ev(tenant, "a", now, 1, "counted-by-a"))
    await produce(env, [fresh])
    await eventually(lambda: _outcome_at_least(env, tenant, "counted", 11), what="fresh usage counted")
    old = now - 60 * HOUR_MS
    late = [
        ev(tenant, "a", old, 2, "shared"),
        ev(tenant, "b", old + 1000, 3, "shared"),
        ev(tenant, "a", old, 2, "shared"),  # a retry of each: still one event per customer
        ev(tenant, "b", old + 1000, 3, "shared"),
        ev(tenant, "b", old, 5, "counted-by-a"),  # a counted the key; b's event is its own
        ev(tenant, "a", old, 4, "claimed"),
    ]
    await produce(env, [late])
    await eventually(lambda: _outcome_at_least(env, tenant, "late", 6), what="too-late events in the ledger")
    window = parse_window("-P4D", "now", now_ms(), env.replay_max_window_seconds)
    assert await waiting_late(env, tenant, window) == 4

    dry = await replay(api, tenant, "dry-run")
    assert dry["eventsReplayed"] == 4 and dry["totals"]["delta"] == 2 + 3 + 5 + 4
    applied = await replay(api, tenant, "apply")
    assert applied["applied"] is True and applied["visible"] is True
    expected = oracle_per_customer(fresh + late)
    assert await local(env, tenant) == expected
    assert await waiting_late(env, tenant, window) == 0

    # b now sends a too-late event with the key a's too-late event was replayed under
    claimed_by_b = ev(tenant, "b", old, 6, "claimed")
    await produce(env, [[claimed_by_b]])
    await eventually(lambda: _outcome_at_least(env, tenant, "late", 7), what="b's too-late event")
    assert await waiting_late(env, tenant, window) == 1
    again = await replay(api, tenant, "apply")
    assert again["eventsReplayed"] == 1 and again["totals"]["delta"] == 6
    expected = oracle_per_customer(fresh + late + [claimed_by_b])
    assert await local(env, tenant) == expected
    assert await waiting_late(env, tenant, window) == 0
    assert (await replay(api, tenant, "apply"))["eventsReplayed"] == 0
    await eventually(lambda: caught_up(env), what="the pipeline caught up")
    assert await local(env, tenant) == expected


def oracle_per_customer(events: list[dict[str, Any]]) -> Counter[tuple[str, int]]:
    """As ``oracle``, with a key one event per customer."""
    seen: set[tuple[str, str]] = set()
    totals: Counter[tuple[str, int]] = Counter()
    for e in events:
        if (e["customerRef"], e["idempotencyKey"]) in seen:
            continue
        seen.add((e["customerRef"], e["idempotencyKey"]))
        ts = _ms(e["ts"])
        totals[(e["customerRef"], ts - ts % HOUR_MS)] += e["quantity"] * 1_000_000
    return totals


def partition_of(env: Settings, tenant: str, customer: str) -> int:
    return partition_for(keyed_routing_key(tenant, customer), env.partitions)


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


async def waiting_late(env: Settings, tenant: str, window: Window) -> int:
    """Too-late events the reconciler reports as waiting for a replay."""
    async with await psycopg.AsyncConnection.connect(env.database_url.value) as conn:
        rows = await late_events(conn, tenant, None, window.since, window.until)
        return sum(int(r["n"]) for r in rows)


async def correction_states(env: Settings, tenant: str) -> dict[str, int]:
    async with await psycopg.AsyncConnection.connect(env.database_url.value) as conn:
        cur = await conn.execute(
            "SELECT status, count(*) FROM replay_corrections WHERE tenant_id = %s GROUP BY status", (tenant,)
        )
        return {status: int(n) for status, n in await cur.fetchall()}


async def test_adjustments_are_counted_once_and_listed(
    env: Settings, start_worker: StartWorker, api: ApiClient
) -> None:
    tenant = f"ad-{uuid.uuid4().hex[:6]}"
    start_worker("w1").wait_ready()
    now = now_ms()
    await produce(env, [[ev(tenant, "acme", now, 10, "a1")]])
    bucket = now - now % HOUR_MS
    await eventually(
        lambda: _equals(local(env, tenant), Counter({("acme", bucket): 10_000_000})), what="usage"
    )
    ts = datetime.fromtimestamp(now / 1000, tz=UTC).isoformat()
    body = {
        "tenantId": tenant,
        "metric": "requests",
        "customerRef": "acme",
        "ts": ts,
        "delta": -2.5,
        "reason": "refund",
    }
    keyed = [TopicNames(env.topic_prefix, env.app_id).keyed]
    response = await api.post("/v1/adjustments", json=body, headers={"Idempotency-Key": "refund-1"})
    assert response.status == 201 and "Idempotent-Replayed" not in response.headers
    first = await response.read()
    created = await response.json()
    # read your writes: answered once the counter shows it
    assert created["visible"] is True
    assert await local(env, tenant) == Counter({("acme", bucket): 7_500_000})
    sent = await end_offsets(env, keyed)
    # a retry with the same key and the same request (ts at another offset, delta written otherwise):
    # the stored answer, byte for byte, and nothing sent to the meter
    local_ts = datetime.fromtimestamp(now / 1000, tz=UTC).astimezone(timezone(timedelta(hours=-5)))
    for again in (body, {**body, "ts": local_ts.isoformat(), "delta": -2.500000}):
        response = await api.post("/v1/adjustments", json=again, headers={"Idempotency-Key": "refund-1"})
        assert response.status == 201 and response.headers["Idempotent-Replayed"] == "true"
        assert await response.read() == first
    assert await end_offsets(env, keyed) == sent
    assert (created["delta"], created["status"], created["target"]) == (-2.5, "applied", "counter")
    assert created["period"]["state"] == "open" and created["warnings"] == []
    # the same key with another request: 409 naming the key, and nothing changes
    for change in (
        {"delta": -3},
        {"customerRef": "other"},
        {"reason": "goodwill"},
        {"ts": ts[:-6] + "+01:00"},
    ):
        response = await api.post(
            "/v1/adjustments", json={**body, **change}, headers={"Idempotency-Key": "refund-1"}
        )
        assert response.status == 409, (change, await response.text())
        error = (await response.json())["error"]
        assert (error["code"], error["field"]) == ("idempotency_conflict", "Idempotency-Key")
        assert '"refund-1"' in error["message"] and next(iter(change)) in error["message"]
    await eventually(lambda: caught_up(env), what="the pipeline caught up")
    assert await end_offsets(env, keyed) == sent
    assert await local(env, tenant) == Counter({("acme", bucket): 7_500_000})
    listed = await (await api.get(f"/v1/adjustments?tenantId={tenant}")).json()
    assert [a["adjustmentId"] for a in listed["adjustments"]] == [created["adjustmentId"]]
    # the key is the tenant's: another tenant's same key is its own adjustment
    other = await api.post(
        "/v1/adjustments", json={**body, "tenantId": f"{tenant}-b"}, headers={"Idempotency-Key": "refund-1"}
    )
    assert other.status in (201, 202) and (await other.json())["adjustmentId"] != created["adjustmentId"]
    # without a key, every request is a new adjustment
    for _ in range(2):
        response = await api.post("/v1/adjustments", json={**body, "delta": 1})
        assert response.status == 201
    assert await local(env, tenant) == Counter({("acme", bucket): 9_500_000})
    bad = await api.post("/v1/adjustments", json={**body, "delta": 0})
    assert bad.status == 400 and (await bad.json())["error"]["field"] == "delta"


async def test_an_adjustment_retried_after_the_meter_forgot_it_still_applies_once(
    env: Settings, start_worker: StartWorker, api: ApiClient
) -> None:
    """The meter's dedupe entry for a correction expires after the lateness window (48 h) plus an hour.
    A worker living 3 days later sees the stream's watermark move on and expires it for real; a retry
    of the adjustment then still applies once: the stored answer, nothing sent. The same correction sent
    again straight to the meter (what a retry that relied on its dedupe did) counts twice."""
    tenant = f"ax-{uuid.uuid4().hex[:6]}"
    worker = start_worker("w1", slot="main")
    worker.wait_ready()
    now = now_ms()
    bucket = now - now % HOUR_MS
    await produce(env, [[ev(tenant, "acme", now, 10, "a1")]])
    await eventually(
        lambda: _equals(local(env, tenant), Counter({("acme", bucket): 10_000_000})), what="usage"
    )
    body = {
        "tenantId": tenant,
        "metric": "requests",
        "customerRef": "acme",
        "ts": datetime.fromtimestamp(now / 1000, tz=UTC).isoformat(),
        "delta": -2.5,
        "reason": "refund",
    }
    headers = {"Idempotency-Key": "refund-late"}
    response = await api.post("/v1/adjustments", json=body, headers=headers)
    assert response.status == 201
    first = await response.read()
    adjustment_id = (await response.json())["adjustmentId"]
    expected = Counter({("acme", bucket): 7_500_000})
    assert await local(env, tenant) == expected

    # three days on: new usage moves the stream's watermark, and the sweep expires the old entries
    worker.stop()
    later = start_worker("w1", slot="main", clock_offset_seconds=72 * 3600)
    later.wait_ready()
    then = now + 72 * HOUR_MS
    await produce(env, [[ev(tenant, "acme", then, 1, "a2")]])
    expected[("acme", then - then % HOUR_MS)] = 1_000_000
    await eventually(lambda: _equals(local(env, tenant), expected), what="usage three days later")

    async def expired() -> bool:  # the entries of a1 and of the correction (a2's is too recent)
        return _metric(later.scrape(), "stripemeter_dedupe_expired_total") >= 2

    await eventually(expired, what="the dedupe sweep to expire the correction's entry")

    keyed = [TopicNames(env.topic_prefix, env.app_id).keyed]
    sent = await end_offsets(env, keyed)
    response = await api.post("/v1/adjustments", json=body, headers=headers)
    assert (response.status, await response.read()) == (201, first)
    assert response.headers["Idempotent-Replayed"] == "true"
    assert await end_offsets(env, keyed) == sent  # nothing sent to the meter
    await eventually(lambda: caught_up(env), what="the pipeline caught up")
    assert await local(env, tenant) == expected

    # what a retry relying on the meter's dedupe did: the same correction again counts twice now
    producer = AIOKafkaProducer(bootstrap_servers=env.kafka_bootstrap_servers, acks="all")
    await producer.start()
    try:
        again = Correction(adjustment_id, tenant, "requests", "acme", bucket, "add", -2_500_000, bucket)
        await send_corrections(producer, keyed[0], [again])
    finally:
        await producer.stop()
    expected[("acme", bucket)] = 5_000_000
    await eventually(lambda: _equals(local(env, tenant), expected), what="the meter to count it again")


def _metric(scraped: str, name: str) -> float:
    for line in scraped.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def test_an_apply_no_worker_applies_says_so_and_shows_once_one_does(
    env: Settings, start_worker: StartWorker, tmp_path: Path
) -> None:
    """Read your writes: without a running meter an apply cannot show; it says so, and where to look."""
    from aiohttp.test_utils import TestServer

    from stripemeter.api.app import create_app

    tenant = f"rv-{uuid.uuid4().hex[:6]}"
    worker = start_worker("w1", slot="main")
    worker.wait_ready()
    fresh, late = scenario(tenant)
    await produce(env, [fresh])
    await eventually(lambda: _outcome_at_least(env, tenant, "counted", 60), what="fresh usage counted")
    await produce(env, [late])
    await eventually(lambda: _outcome_at_least(env, tenant, "late", 45), what="too-late events in the ledger")
    worker.stop()
    client = TestClient(TestServer(create_app(env.with_overrides(apply_wait_seconds=1.0))))
    await client.start_server()
    try:
        applied = await replay(client, tenant, "apply")
        assert (applied["applied"], applied["visible"]) == (True, False)
        assert f"/v1/replay/{applied['replayId']}" in applied["message"]
        stored = await (await client.get(f"/v1/replay/{applied['replayId']}")).json()
        assert stored["visible"] is False
        start_worker("w1", slot="main").wait_ready()

        async def shown() -> bool:
            report = await (await client.get(f"/v1/replay/{applied['replayId']}")).json()
            return bool(report["visible"])

        await eventually(shown, timeout=60, what="the apply to show")
        assert await local(env, tenant) == oracle(fresh + late)
    finally:
        await client.close()


async def test_bad_replay_requests_name_the_field(env: Settings, api: ApiClient) -> None:
    base = {"tenantId": "t", "metrics": ["requests"], "since": "-PT24H", "until": "now", "mode": "dry-run"}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"metrics": ["nope"]}, "metrics"),
        ({"metrics": []}, "metrics"),
        ({"since": "now", "until": "-PT1H"}, "since"),
        ({"since": "-PT24X"}, "since"),
        ({"since": "2026-11-20T00:00:00"}, "since"),
        ({"until": "tomorrow"}, "until"),
        ({"since": "-P400D"}, "since"),
        ({"since": "0999-01-01T00:00:00Z", "until": "0999-01-02T00:00:00Z"}, "since"),
        ({"since": "-P999999999D", "until": "-P999999998D"}, "since"),
        ({"mode": "later"}, "mode"),
        ({"tenantId": "bad tenant"}, "tenantId"),
    ]
    for change, field in cases:
        response = await api.post("/v1/replay", json={**base, **change})
        assert response.status == 400, (change, await response.text())
        assert (await response.json())["error"]["field"] == field, change
    missing = await api.get("/v1/replay/rpl_nope")
    assert missing.status == 404


async def test_an_adjustment_time_before_1970_is_refused_naming_ts(env: Settings, api: ApiClient) -> None:
    """Such a ``ts`` made a delta whose bucket the Stripe writer could not read back (year 999 was
    written "999"), or with a billing anchor a period before year 1: the API refuses it."""
    body = {"tenantId": "t", "metric": "requests", "customerRef": "acme", "delta": 1, "reason": "refund"}
    for ts in ("0999-01-01T05:00:00Z", "0001-01-01T00:00:00Z", "1969-12-31T23:59:59Z"):
        response = await api.post("/v1/adjustments", json={**body, "ts": ts})
        assert response.status == 400, (ts, await response.text())
        assert (await response.json())["error"]["field"] == "ts", ts


async def _outcome_at_least(env: Settings, tenant: str, outcome: str, n: int) -> bool:
    return (await outcomes_of(env, tenant)).get(outcome, 0) >= n


async def _equals(actual: Awaitable[Counter[tuple[str, int]]], expected: Counter[tuple[str, int]]) -> bool:
    return +(await actual) == +expected


async def test_a_replay_names_each_customers_own_billing_period(env: Settings) -> None:
    """A customer with a billing anchor has its changes in its own cycle: the replay reads the anchors
    of the customers it changes (a dry-run, no worker needed)."""
    tenant = f"anchors-{uuid.uuid4().hex[:8]}"
    hour = (datetime.now(UTC) - timedelta(days=3)).replace(minute=0, second=0, microsecond=0)
    anchor = hour.replace(minute=30)  # that day's cycle begins after this hour: it is in the one before
    columns = (
        "source_topic, source_partition, source_offset, source_index, outcome, tenant_id, metric,"
        " customer_ref, quantity_micros, ts, idempotency_key, key_derived"
    )
    async with await psycopg.AsyncConnection.connect(env.database_url.value, autocommit=True) as conn:
        mapping = MetricMapping(tenant, "requests", "requests", "sum", None)
        await upsert_metric(conn, mapping, env.clock.utc(), env.lateness_seconds)
        await upsert_customer(conn, tenant, "anchored", "cus_anchored", anchor)
        await upsert_customer(conn, tenant, "plain", "cus_plain", None)
        async with conn.cursor() as cur, cur.copy(f"COPY events ({columns}) FROM STDIN") as copy:
            for i, customer in enumerate(("anchored", "plain", "unmapped")):  # from a source topic of its own
                ts = hour + timedelta(minutes=10)
                await copy.write_row(
                    (tenant, 0, i, 0, "late", tenant, "requests", customer, 1_000_000, ts, f"k{i}", False)
                )
        replayer = build_replayer(env, AIOKafkaProducer(bootstrap_servers=env.kafka_bootstrap_servers))
        request = ReplayRequest(
            tenant, ["requests"], None, Window(hour, hour + timedelta(hours=1)), "dry-run"
        )
        report = await replayer.run(conn, request)
    plain = current_name(hour)
    assert current_name(hour, anchor) != plain
    assert {c["customerRef"]: c["period"] for c in report["counters"]} == {
        "anchored": current_name(hour, anchor),
        "plain": plain,
        "unmapped": plain,
    }
