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

from stripemeter.config import Settings
from stripemeter.topics import TopicNames
from tests.integration.client import counters_of, eventually, produce, read_topic

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
    env: Settings, start_worker
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
