"""The PostgreSQL sink against the real database: raw records in, rows out, bad records skipped alone."""

from __future__ import annotations

import uuid
from typing import Any, NamedTuple

import orjson
import psycopg
import pytest
from prometheus_client import REGISTRY

from stripemeter.adapters.postgres import ledger
from stripemeter.domain.config import Settings
from stripemeter.domain.kafka_access import KafkaAccess
from stripemeter.schemas.deltas import Delta, encode_delta
from stripemeter.schemas.events import UsageEvent
from stripemeter.schemas.ledger_items import WIRE_FIELDS, ledger_item
from stripemeter.schemas.records import keyed_item
from stripemeter.schemas.topics import TopicNames
from stripemeter.schemas.versions import UnknownRecordVersion
from stripemeter.streams.sink import PostgresSink

HOUR_MS = 3_600_000
T0 = 1_790_000_000_000 // HOUR_MS * HOUR_MS  # an hour boundary in 2026


class Message(NamedTuple):
    """What the sink reads from a ConsumerRecord."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    timestamp: int = T0 + 60_000  # the record's time: a dead letter's row is placed by it


def item(
    outcome: str, tenant: str, customer: str, micros: int, ts_ms: int, key: str, offset: int
) -> list[Any]:
    """A ledger item as the worker writes it (see stripemeter/schemas/ledger_items.py)."""
    meta = {"path": "/v1/x\\y\t"} if offset == 1 else None  # escapes survive COPY
    event = UsageEvent(tenant, "requests", customer, micros, ts_ms, key, False, None, meta)
    return ledger_item(outcome, keyed_item(event, 0, offset, 0))


def delta(tenant: str, customer: str, total_micros: int, seq: int) -> bytes:
    return encode_delta(Delta(tenant, "requests", customer, T0, total_micros, seq))


def skipped(topic: str) -> float:
    return REGISTRY.get_sample_value("stripemeter_sink_skipped_records_total", {"topic": topic}) or 0.0


async def write(env: Settings, names: TopicNames, messages: list[Message]) -> None:
    sink = PostgresSink(KafkaAccess("unused:9092"), names, "unused", env.database_url.value)
    async with await psycopg.AsyncConnection.connect(env.database_url.value, autocommit=True) as conn:
        await sink.prepare(conn)
        await sink._write(conn, messages)  # the unit under test, without Kafka


async def rows(env: Settings, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(env.database_url.value) as conn:
        cur = await conn.execute(sql, params)
        return await cur.fetchall()


async def test_ledger_dead_letters_and_deltas_land_once(env: Settings) -> None:
    names = TopicNames(env.topic_prefix, env.app_id)
    tenant = f"sink-{uuid.uuid4().hex[:8]}"
    chunk = [
        item("counted", tenant, "acme", 2_500_000, T0 + 1_000, "k1", 1),
        item("duplicate", tenant, "acme", 2_500_000, T0 + 1_000, "k1", 2),
        item("counted", tenant, "acme", 1_000_000, T0 + 9_000, "k2", 3),
        item("late", tenant, "acme", 1_000_000, T0 - 50 * HOUR_MS, "k3", 4),
    ]
    dead_letter = {"topic": names.events, "partition": 0, "offset": 5, "index": 0,
                   "error": {"code": "invalid_json", "message": "not JSON"}, "raw": "{nope"}  # fmt: skip
    batch = [
        Message(names.ledger, 0, 0, orjson.dumps(chunk)),
        Message(names.dlq, 0, 0, orjson.dumps(dead_letter)),
        Message(names.deltas, 0, 0, delta(tenant, "acme", 2_500_000, 1)),
        Message(names.deltas, 0, 2, delta(tenant, "acme", 3_500_000, 2)),
        Message(names.deltas, 0, 1, delta(tenant, "acme", 1_000_000, 0)),  # older seq, read later
    ]
    await write(env, names, batch)
    await write(env, names, batch)  # a redelivered batch changes nothing

    ledger_rows = await rows(
        env,
        "SELECT source_offset, outcome, quantity_micros, ts, idempotency_key, key_derived, meta"
        " FROM events WHERE source_topic = %s AND outcome <> 'rejected' ORDER BY source_offset",
        names.events,
    )
    assert [(r[0], r[1], int(r[2]), r[4]) for r in ledger_rows] == [
        (1, "counted", 2_500_000, "k1"),
        (2, "duplicate", 2_500_000, "k1"),
        (3, "counted", 1_000_000, "k2"),
        (4, "late", 1_000_000, "k3"),
    ]
    assert int(ledger_rows[0][3].timestamp() * 1000) == T0 + 1_000
    assert ledger_rows[0][5] is False
    assert ledger_rows[0][6] == {"path": "/v1/x\\y\t"}
    assert ledger_rows[1][6] is None
    rejected = await rows(
        env,
        "SELECT error_code, raw FROM events WHERE source_topic = %s AND outcome = 'rejected'",
        names.events,
    )
    assert rejected == [("invalid_json", "{nope")]
    [(watermark,)] = await rows(env, "SELECT watermark FROM watermarks WHERE tenant_id = %s", tenant)
    assert (
        int(watermark.timestamp() * 1000) == T0 + 9_000
    )  # the newest counted event; late ones do not move it
    assert await rows(env, "SELECT total_micros, seq FROM counters WHERE tenant_id = %s", tenant) == [
        (3_500_000, 2)
    ]


async def test_the_generated_ledger_columns_read_every_field_of_a_ledger_item_by_its_name(
    env: Settings,
) -> None:
    """The column list the sink's SQL is built from, over a ledger record of the current format."""
    event = UsageEvent(
        "acme", "api_calls", "cus_1", 2_500_000, T0 + 123, "k-1", True, "res-9", {"region": "eu"}
    )
    chunk = orjson.dumps([2, ledger_item("late", keyed_item(event, 3, 41, 2))]).decode()
    async with await psycopg.AsyncConnection.connect(env.database_url.value) as conn:
        cur = await conn.execute(
            f"SELECT {ledger.ledger_item_columns('e')} FROM jsonb_array_elements(%s::jsonb) AS e"
            " WHERE jsonb_typeof(e) = 'array'",
            (chunk,),
        )
        [row] = await cur.fetchall()
        names = [column.name for column in cur.description or []]
    assert dict(zip(names, row, strict=True)) == {
        "outcome": "late",
        "tenant_id": "acme",
        "metric": "api_calls",
        "customer_ref": "cus_1",
        "quantity_micros": 2_500_000,
        "ts_ms": T0 + 123,
        "idempotency_key": "k-1",
        "key_derived": True,
        "resource_id": "res-9",
        "meta": {"region": "eu"},
        "source_partition": 3,
        "source_offset": 41,
        "source_index": 2,
    }
    assert tuple(names) == WIRE_FIELDS


def rewrites() -> float:
    return REGISTRY.get_sample_value("stripemeter_sink_ledger_rewrites_total") or 0.0


async def test_ledger_rows_written_before_are_kept_and_the_new_ones_added(env: Settings) -> None:
    """A crash between the ledger write and the offset commit, or a meter that published the same
    events twice: records overlap rows already written, in earlier batches or in the same one."""
    names = TopicNames(env.topic_prefix, env.app_id)
    tenant = f"sink-{uuid.uuid4().hex[:8]}"
    first = [item("counted", tenant, "acme", 1_000_000, T0 + i, f"k{i}", i) for i in (1, 2)]
    before = rewrites()
    await write(env, names, [Message(names.ledger, 0, 0, orjson.dumps(first))])
    assert rewrites() == before  # new rows: the plain insert

    again = [item("counted", tenant, "acme", 5_000_000, T0 + i, f"k{i}", i) for i in (1, 2, 3)]
    also = [item("counted", tenant, "acme", 7_000_000, T0 + 4, "k4", 4)]
    await write(
        env,
        names,
        [
            Message(names.ledger, 0, 1, orjson.dumps(again)),
            Message(names.ledger, 0, 2, orjson.dumps(also + also)),  # one event twice in one batch
        ],
    )
    assert rewrites() == before + 1
    ledger_rows = await rows(
        env,
        "SELECT source_offset, quantity_micros FROM events WHERE tenant_id = %s ORDER BY source_offset",
        tenant,
    )
    assert [(offset, int(micros)) for offset, micros in ledger_rows] == [
        (1, 1_000_000),  # as first written
        (2, 1_000_000),
        (3, 5_000_000),
        (4, 7_000_000),
    ]


async def test_unreadable_records_are_skipped_and_the_rest_written(env: Settings) -> None:
    names = TopicNames(env.topic_prefix, env.app_id)
    tenant = f"sink-{uuid.uuid4().hex[:8]}"
    before = {topic: skipped(topic) for topic in (names.ledger, names.dlq, names.deltas)}
    batch = [
        Message(names.ledger, 0, 0, orjson.dumps([item("counted", tenant, "acme", 1_000_000, T0, "a", 1)])),
        Message(names.ledger, 0, 1, b'{"not": "an array"}'),
        Message(names.ledger, 0, 2, b"[[1, 2, 3]]"),  # items without the fields the ledger needs
        Message(names.dlq, 0, 0, b"\xff\xfe not json"),
        Message(names.deltas, 0, 0, b'{"tenantId": "x", "bucket": "yesterday"}'),
        Message(names.deltas, 0, 1, None),
        Message(names.deltas, 0, 2, delta(tenant, "beta", 7_000_000, 3)),
    ]
    await write(env, names, batch)

    counted = await rows(env, "SELECT idempotency_key FROM events WHERE tenant_id = %s", tenant)
    assert counted == [("a",)]
    totals = await rows(env, "SELECT customer_ref, total_micros FROM counters WHERE tenant_id = %s", tenant)
    assert totals == [("beta", 7_000_000)]
    after = {topic: skipped(topic) - n for topic, n in before.items()}
    assert after == {names.ledger: 2, names.dlq: 1, names.deltas: 2}


@pytest.mark.parametrize("raw", [b'{"a": "tab\there"}', b'{"a": "line\\nbreak \\\\ slash"}'])
def test_copy_json_line_keeps_one_record_per_line(raw: bytes) -> None:
    line = ledger.copy_json_line(raw)
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and b"\t" not in line


async def test_records_of_both_formats_land_alike_and_a_later_format_stops_the_sink(env: Settings) -> None:
    """The ledger and usage.deltas of the previous release (no version) and of this one, in one batch;
    a record of a later release is neither written nor skipped: the batch fails as a whole, so the
    sink stops without committing it (a billing record is never dropped)."""
    names = TopicNames(env.topic_prefix, env.app_id)
    tenant = f"sink-{uuid.uuid4().hex[:8]}"
    old = [item("counted", tenant, "acme", 1_000_000, T0 + 1_000, "old", 1)]
    new = [item("counted", tenant, "beta", 2_000_000, T0 + 2_000, "new", 2)]
    old_delta = orjson.loads(delta(tenant, "acme", 1_000_000, 1))
    del old_delta["v"]
    batch = [
        Message(names.ledger, 0, 0, orjson.dumps(old)),
        Message(names.ledger, 0, 1, orjson.dumps([2, *new])),
        Message(names.deltas, 0, 0, orjson.dumps(old_delta)),
        Message(names.deltas, 0, 1, delta(tenant, "beta", 2_000_000, 1)),
    ]
    await write(env, names, batch)
    got = await rows(env, "SELECT idempotency_key FROM events WHERE tenant_id = %s ORDER BY 1", tenant)
    assert got == [("new",), ("old",)]
    totals = await rows(
        env, "SELECT customer_ref, total_micros FROM counters WHERE tenant_id = %s ORDER BY 1", tenant
    )
    assert totals == [("acme", 1_000_000), ("beta", 2_000_000)]

    before = {topic: skipped(topic) for topic in (names.ledger, names.deltas)}
    later = [item("counted", tenant, "gamma", 1_000_000, T0, "later", 3)]
    for message in (
        Message(names.ledger, 0, 2, orjson.dumps([3, *later])),
        Message(names.deltas, 0, 2, b'{"v":3,' + delta(tenant, "gamma", 1_000_000, 1)[7:]),
    ):
        with pytest.raises(UnknownRecordVersion):
            await write(env, names, [Message(names.ledger, 0, 3, orjson.dumps(later)), message])
    assert (
        await rows(env, "SELECT 1 FROM events WHERE tenant_id = %s AND customer_ref = 'gamma'", tenant) == []
    )
    assert {topic: skipped(topic) for topic in before} == before
