"""Topic inspection on the real broker: list with lag, describe, tail (decoding, filters, start
positions, follow, garbage) and Kafka's own tools from the broker jars."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from stripemeter.adapters.kafka.admin import ensure_topics
from stripemeter.adapters.kafka.inspect.tail import TailRequest, TopicNotFound, tail
from stripemeter.domain.config import Settings, settings_env
from stripemeter.schemas.topics import DAY_MS, TopicNames, TopicSpec

EVENT = {
    "tenantId": "acme",
    "metric": "requests",
    "customerRef": "c-1",
    "quantity": 2,
    "ts": "2026-01-05T10:00:00Z",
    "idempotencyKey": "k-1",
}
GARBAGE = [
    b"\x00\x01\x02\xff\xfe binary",  # invalid UTF-8
    "caf\u00e9 but then \udcff".encode("utf-8", "surrogatepass"),  # a lone surrogate: not UTF-8
    b"this is not json {",
    b"[" + b"x" * 400_000,  # several hundred KB, not JSON
    None,  # a null value
]


def cli(settings: Settings, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings_env(settings)}
    return subprocess.run(
        [sys.executable, "-m", "stripemeter", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


async def produce(settings: Settings, topic: str, values: list[bytes | None], **kwargs: object) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers, max_request_size=2_000_000
    )
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, **kwargs)
    finally:
        await producer.stop()


async def read_all(settings: Settings, request: TailRequest) -> list[str]:
    lines: list[str] = []
    await asyncio.wait_for(tail(settings.kafka, request, lines.append), 30)
    return lines


async def test_tail_decodes_contract_records_and_filters(env: Settings) -> None:
    names = TopicNames(env.topic_prefix, env.app_id)
    other = {**EVENT, "tenantId": "globex", "customerRef": "c-2", "idempotencyKey": "k-2"}
    await produce(
        env, names.events, [orjson.dumps(EVENT), orjson.dumps([other, {**EVENT, "customerRef": "c-3"}])]
    )
    dead = {
        "error": {"code": "invalid_field", "message": "quantity must be >= 0", "field": "quantity"},
        "topic": names.events,
        "partition": 0,
        "offset": 9,
        "raw": orjson.dumps({**EVENT, "quantity": -1}).decode(),
    }
    await produce(env, names.dlq, [orjson.dumps(dead)])

    result = cli(env, "topics", "tail", "usage.events", "--from-beginning", "--tenant", "acme")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2, lines
    assert all(" usage.events " in line and " event tenant=acme metric=requests " in line for line in lines)
    assert sorted(line.split("customer=")[1].split()[0] for line in lines) == ["c-1", "c-3"]

    result = cli(env, "topics", "tail", "usage.events", "--from-beginning", "--customer", "c-2", "--json")
    (line,) = result.stdout.splitlines()
    parsed = orjson.loads(line)
    assert parsed["topic"] == "usage.events" and parsed["index"] == 0 and parsed["record"] == other

    result = cli(env, "topics", "tail", f"{env.topic_prefix}usage.events.dlq", "--tenant", "acme")
    (line,) = result.stdout.splitlines()
    assert 'dead-letter code=invalid_field field=quantity message="quantity must be >= 0" tenant=acme' in line

    limited = cli(env, "topics", "tail", "usage.events", "--from-beginning", "--limit", "1")
    assert len(limited.stdout.splitlines()) == 1


async def test_tail_shows_garbage_with_labels_and_never_stops(env: Settings) -> None:
    topic = f"{env.topic_prefix}garbage"
    await ensure_topics(env.kafka, [TopicSpec(topic, 1, DAY_MS, "delete")])
    names = TopicNames(env.topic_prefix, env.app_id)
    await produce(env, topic, [*GARBAGE, b'{"fine": true}'], key=b"junk")  # a null value needs a key
    await produce(env, names.events, [*GARBAGE, orjson.dumps(EVENT)], key=b"junk", partition=0)

    for name in (topic, "usage.events"):
        result = cli(env, "topics", "tail", name, "--from-beginning")
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert len(lines) == 6, lines
        assert "[binary] 12 bytes, not UTF-8 at byte 3: 00 01 02 ff fe" in lines[0]
        assert "[binary]" in lines[1] and "not UTF-8" in lines[1]
        assert "[raw] not JSON (18 bytes): this is not json {" in lines[2]
        assert "[raw] not JSON (400001 bytes): [xxxx" in lines[3] and lines[3].endswith("(400001 chars)")
        assert len(lines[3]) < 300
        assert "[empty] null value" in lines[4]
    assert lines[5].split(" ", 3)[3].startswith("event tenant=acme")

    result = cli(env, "topics", "tail", topic, "--from-beginning", "--json")
    kinds = [orjson.loads(line)["kind"] for line in result.stdout.splitlines()]
    assert kinds == ["binary", "binary", "raw", "raw", "empty", "json"]


async def test_tail_starts_where_asked(env: Settings) -> None:
    names = TopicNames(env.topic_prefix, env.app_id)
    now_ms = int(time.time() * 1000)
    delta = {"tenantId": "acme", "metric": "requests", "customerRef": "c-1", "total": 1, "seq": 1}
    old = orjson.dumps({**delta, "bucket": "2026-01-05T08:00:00Z"})
    new = orjson.dumps({**delta, "bucket": "2026-01-05T10:00:00Z", "seq": 2})
    await produce(env, names.deltas, [old], partition=0, timestamp_ms=now_ms - 2 * 3_600_000)
    await produce(env, names.deltas, [new], partition=0, timestamp_ms=now_ms)

    result = cli(env, "topics", "tail", "usage.deltas", "--since", "-PT1H")
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    assert "delta tenant=acme metric=requests customer=c-1 bucket=2026-01-05T10:00:00Z total=1 seq=2" in line

    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now_ms / 1000 - 3 * 3600))
    assert len(cli(env, "topics", "tail", "usage.deltas", "--since", since).stdout.splitlines()) == 2
    last = cli(env, "topics", "tail", "usage.deltas", "--last", "1").stdout.splitlines()
    assert len(last) == 1 and "seq=2" in last[0]
    assert cli(env, "topics", "tail", "usage.deltas", "--since", "yesterday").returncode == 1


async def test_tail_follows_new_records_and_internal_topics(env: Settings) -> None:
    names = TopicNames(env.topic_prefix, env.app_id)
    request = TailRequest(names.changelog("counters"), "counters", "counters", follow=True, limit=1)
    lines: list[str] = []
    follower = asyncio.create_task(tail(env.kafka, request, lines.append))
    await asyncio.sleep(2)  # assigned and at the end
    assert not follower.done()
    key = b"acme\x1frequests\x1fc-1\x1f1767607200000"
    await produce(env, names.changelog("counters"), [b"[3000000,4,12,-1]"], key=key)
    assert await asyncio.wait_for(follower, 20) == 1
    assert lines[0].endswith(
        "counter tenant=acme metric=requests customer=c-1 bucket=2026-01-05T10:00:00Z value=3 seq=4 "
        "appliedOffset=12"
    )
    with pytest.raises(TopicNotFound):
        await read_all(env, TailRequest(f"{env.topic_prefix}nope", "nope", "other"))


async def test_list_and_describe_show_counts_and_lag(env: Settings) -> None:
    names = TopicNames(env.topic_prefix, env.app_id)
    await produce(env, names.events, [orjson.dumps(EVENT)] * 3, partition=0)
    group = AIOKafkaConsumer(
        bootstrap_servers=env.kafka_bootstrap_servers,
        group_id=f"{env.app_id}-intake",
        enable_auto_commit=False,
    )
    await group.start()
    try:
        group.assign([TopicPartition(names.events, 0)])
        await group.commit({TopicPartition(names.events, 0): 1})
    finally:
        await group.stop()

    result = cli(env, "topics", "list")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()]
    events_row = next(r for r in rows if r and r[0] == names.events)
    assert events_row[1:] == ["2", "7d", "delete", "3"]
    assert any(r[:1] == [names.changelog("counters")] and r[2:4] == ["forever", "compact"] for r in rows)
    lag = [r for r in rows if r[:2] == [f"{env.app_id}-intake", "intake"]]
    assert [r[-4:] for r in lag] == [["0", "1", "3", "2"], ["1", "-", "0", "0"]]
    assert f"Stripe writer ({env.app_id}-stripe-writer): no committed offsets" in result.stdout

    result = cli(env, "topics", "describe", "usage.events")
    assert result.returncode == 0, result.stderr
    assert f"topic {names.events}: 2 partitions, 3 messages" in result.stdout
    assert "retention.ms = 7d" in result.stdout and "max.message.bytes = 16777216" in result.stdout
    assert any(line.split()[:7] == ["0", "1", "1", "1", "0", "3", "3"] for line in result.stdout.splitlines())
    assert cli(env, "topics", "describe", "usage.nope").returncode == 1


async def test_kafka_tools_run_from_the_broker_jars(env: Settings) -> None:
    names = TopicNames(env.topic_prefix, env.app_id)
    await produce(env, names.late, [orjson.dumps({**EVENT, "watermark": "x", "lateness": 1})], partition=1)

    result = cli(env, "kafka-tool", "kafka-topics", "--describe", "--topic", names.late, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"Topic: {names.late}" in result.stdout and "PartitionCount: 2" in result.stdout

    result = cli(
        env,
        "kafka-tool",
        "kafka-console-consumer",
        "--topic",
        names.late,
        "--from-beginning",
        "--max-messages",
        "1",
        "--timeout-ms",
        "20000",
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout.strip())["tenantId"] == "acme"

    result = cli(env, "kafka-tool", "kafka-nope")
    assert result.returncode == 1 and "unknown Kafka tool" in result.stderr
