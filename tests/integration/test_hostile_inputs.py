"""Hostile Kafka inputs end in the dead-letter topic, each with a reason, while the worker keeps counting.

test_metering covers garbage, a 3 MB message and a few bad events; this adds what took a stage down or
would have: nesting beyond orjson's limits (the whole message, one array element, meta), NUL characters
PostgreSQL refuses, a quantity beyond 64-bit micro-units, invalid UTF-8 inside a JSON string, a lone
surrogate, and several-MB messages of binary and of JSON. All go to one partition, so the dead letters
come back in input order.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from stripemeter.domain.config import Settings
from stripemeter.schemas.topics import TopicNames
from tests.integration.client import counters_of, eventually, produce, read_topic
from tests.integration.harness import StartWorker

NOW = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def event(tenant: str, **fields: Any) -> dict[str, Any]:
    return {
        "tenantId": tenant,
        "metric": "requests",
        "customerRef": "acme",
        "quantity": 1,
        "ts": NOW,
        **fields,
    }


async def test_hostile_kafka_inputs_are_dead_letters_and_counting_goes_on(
    env: Settings, start_worker: StartWorker
) -> None:
    worker = start_worker()
    worker.wait_ready()
    tenant = f"hx-{uuid.uuid4().hex[:6]}"
    deep_element = (
        b"[" + orjson.dumps(event(tenant, idempotencyKey="sibling")) + b"," + b"[" * 300 + b"]" * 301
    )
    meta_deep = orjson.dumps(event(tenant))[:-1] + b', "meta": ' + b'{"a":' * 300 + b"1" + b"}" * 300 + b"}"
    hostile: list[tuple[bytes, str, str | None]] = [  # message, expected code, field
        (b"[" * 100_000, "not_json", None),
        (b"[" * 100_000 + b"]" * 100_000, "not_json", None),
        (deep_element, "not_object", None),  # its first element is valid and counts
        (meta_deep, "unwritable", "meta"),  # meta nested deeper than orjson writes
        (orjson.dumps(event(tenant, customerRef="ac\x00me")), "invalid_value", "customerRef"),
        (orjson.dumps(event(tenant, meta={"note": "nul \x00 here"})), "invalid_value", "meta"),
        (orjson.dumps(event(tenant, quantity=1e20)), "invalid_value", "quantity"),
        (b'{"tenantId": "' + tenant.encode() + b'", "customerRef": "\xff\xfe"}', "not_json", None),
        (b'{"tenantId": "' + tenant.encode() + b'", "customerRef": "\\ud800"}', "not_json", None),
        (os.urandom(6 * 1024 * 1024), "too_large", None),
        (orjson.dumps(event(tenant, pad="z" * (5 * 1024 * 1024))), "too_large", None),
    ]
    await produce(env, [m for m, _, _ in hostile], raw=True, key=b"hostile")
    await produce(
        env, [event(tenant, quantity=7, idempotencyKey="v1"), event(tenant, quantity=5)], key=b"hostile"
    )

    async def counted() -> bool:
        return sum((await counters_of(env, tenant)).values()) == 13_000_000

    await eventually(counted, what="the valid events counted after the hostile ones")
    assert worker.proc is not None and worker.proc.poll() is None  # still running

    dlq = TopicNames(env.topic_prefix, env.app_id).dlq
    records = sorted((orjson.loads(m.value) for m in await read_topic(env, dlq, expect=len(hostile))),
                     key=lambda r: r["offset"])  # fmt: skip
    assert len(records) == len(hostile)
    for record, (message, code, field) in zip(records, hostile, strict=True):
        error = record["error"]
        assert (error["code"], error.get("field")) == (code, field), (message[:60], error)
        assert error["message"] and record["raw"] is not None
    assert records[2]["index"] == 1  # the deep element, carried with its whole message
    assert records[7]["rawEncoding"] == "base64" and records[9]["rawEncoding"] == "base64"


async def test_maxima_an_overflow_and_a_poisoned_keyed_message_leave_the_worker_running(
    env: Settings, start_worker: StartWorker
) -> None:
    """Through real Kafka: 12 messages of 240 events with a 3.9 KiB meta each (every message just under
    1 MiB, 11 MiB in all, sent to one partition so intake packs them), a 1,000-event array, three
    events of the largest quantity for one counter (one fits it, two would overflow it), and a keyed
    message the meter cannot handle, written straight to the keyed topic. Everything valid is counted, every
    other event is a dead letter with its code, and the worker is the same process throughout."""
    worker = start_worker()
    worker.wait_ready()
    pid = worker.proc.pid if worker.proc else None
    tenant = f"mx-{uuid.uuid4().hex[:6]}"
    meta = {"blob": "m" * (4096 - 20)}
    heavy = [
        [event(tenant, customerRef=f"c{m}", idempotencyKey=f"h{m}-{i}", meta=meta) for i in range(240)]
        for m in range(12)
    ]
    assert all(1_000_000 < len(orjson.dumps(batch)) < 1024 * 1024 for batch in heavy)
    wide = [event(tenant, customerRef="wide", idempotencyKey=f"w{i}") for i in range(1000)]
    largest = 9_223_372_036_854
    overflow = [event(tenant, customerRef="big", quantity=largest, idempotencyKey=f"b{i}") for i in range(3)]
    await produce(env, [*heavy, wide, overflow], key=b"maxima")
    names = TopicNames(env.topic_prefix, env.app_id)
    broken_item = [tenant, "requests", "poison", "not micro-units", "not a time", "k", 0, None, None, 0, 9, 0]
    poisoned = orjson.dumps([broken_item])
    keyed = AIOKafkaProducer(bootstrap_servers=env.kafka_bootstrap_servers, acks="all")
    await keyed.start()
    try:
        await keyed.send_and_wait(names.keyed, poisoned, partition=0)
    finally:
        await keyed.stop()
    await produce(env, [event(tenant, customerRef="after", quantity=3, idempotencyKey="after")])

    async def all_counted() -> bool:
        totals = await counters_of(env, tenant)
        by_customer: dict[str, int] = {}
        for (_metric, customer, _bucket), micros in totals.items():
            by_customer[customer] = by_customer.get(customer, 0) + micros
        return (
            all(by_customer.get(f"c{m}") == 240_000_000 for m in range(12))
            and by_customer.get("wide") == 1_000_000_000
            and by_customer.get("big") == largest * 1_000_000
            and by_customer.get("after") == 3_000_000
        )

    await eventually(all_counted, timeout=120, what="every valid event counted")
    assert worker.proc is not None and worker.proc.poll() is None and worker.proc.pid == pid
    records = [orjson.loads(m.value) for m in await read_topic(env, names.dlq, expect=3)]
    codes = sorted(r["error"]["code"] for r in records)
    assert codes.count("counter_overflow") == 2 and "processing_failed" in codes, codes
    assert "Restarting" not in worker.log_tail(400) and "crashed" not in worker.log_tail(400).lower()
