"""Topic inspection, pure parts: --since parsing, name resolution, decoding, one-line rendering."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import get_args

import orjson
import pytest
from aiokafka.structs import TopicPartition

from stripemeter.adapters.kafka.inspect.decode import decode_record
from stripemeter.adapters.kafka.inspect.kafka_tools import UnknownTool, tool_args, tool_command
from stripemeter.adapters.kafka.inspect.kinds import Kind, is_ours, logical_name, resolve_topic, topic_kind
from stripemeter.adapters.kafka.inspect.overview import PartitionState, TopicState, lag_rows
from stripemeter.adapters.kafka.inspect.render import Position, json_line, text_line
from stripemeter.adapters.kafka.inspect.tail import TailRequest, matches
from stripemeter.cli import build_parser, glue_negative_durations
from stripemeter.domain.instants import BadInstant, parse_duration_ms, parse_instant_ms
from stripemeter.schemas.drift import Drift, encode_drift
from stripemeter.schemas.topics import TABLES, TopicNames

NOW = 1_800_000_000_000
NAMES = TopicNames("t1.", "sm-x")
AT = Position("usage.events", 1, 42, 1_763_647_391_250, None)


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("-PT1H", -3_600_000),
        ("PT30M", 1_800_000),
        ("-P7D", -7 * 86_400_000),
        ("-P1DT2H3M4.5S", -(86_400_000 + 2 * 3_600_000 + 3 * 60_000 + 4_500)),
        ("+P1W", 7 * 86_400_000),
        ("-pt15m", -900_000),
    ],
)
def test_durations(text: str, ms: int) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize(
    "text", ["-P", "PT", "-P1M", "P1Y", "-PT1X", "1h", "", "yesterday", "2026-11-20T14:00:00"]
)
def test_bad_instants(text: str) -> None:
    with pytest.raises(BadInstant):
        parse_instant_ms(text, NOW)


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("now", NOW),
        ("-PT1H", NOW - 3_600_000),
        ("2026-11-20T14:03:11.250Z", 1_795_183_391_250),
        ("2026-11-20T15:03:11.250+01:00", 1_795_183_391_250),
    ],
)
def test_instants(text: str, ms: int) -> None:
    assert parse_instant_ms(text, NOW) == ms


def test_negative_duration_after_since_is_kept_as_its_value() -> None:
    argv = glue_negative_durations(["topics", "tail", "usage.events", "--since", "-PT1H", "--tenant", ""])
    assert argv == ["topics", "tail", "usage.events", "--since=-PT1H", "--tenant", ""]
    args = build_parser().parse_args(argv)
    assert args.since == "-PT1H" and args.tenant == ""


def test_a_negative_duration_after_until_stays_the_until() -> None:
    argv = ["replay", "--tenant", "t", "--metric", "m", "--since", "-P2D", "--until", "-P1D"]
    assert glue_negative_durations(argv)[-2:] == ["--since=-P2D", "--until=-P1D"]
    args = build_parser().parse_args(glue_negative_durations(argv))
    assert (args.since, args.until) == ("-P2D", "-P1D")


@pytest.mark.parametrize(
    ("given", "full", "kind"),
    [
        ("usage.events", "t1.usage.events", "events"),
        ("usage.events.dlq", "t1.usage.events.dlq", "dlq"),
        ("reconciliation.drift", "t1.reconciliation.drift", "drift"),
        ("t1.usage.deltas", "t1.usage.deltas", "deltas"),
        ("ledger", "sm-x-ledger", "ledger"),
        ("events-keyed", "sm-x-events-keyed", "keyed"),
        ("counters-changelog", "sm-x-counters-changelog", "counters"),
        ("sm-x-dedupe-changelog", "sm-x-dedupe-changelog", "dedupe"),
        ("someone.else", "someone.else", "other"),
    ],
)
def test_topic_names_resolve(given: str, full: str, kind: str) -> None:
    assert resolve_topic(NAMES, given) == full
    assert topic_kind(NAMES, full) == kind


def test_every_table_is_a_kind() -> None:  # kinds_by_name casts each table name to Kind
    assert set(TABLES) <= set(get_args(Kind))


def test_ours_and_logical_names() -> None:
    assert is_ours(NAMES, "sm-x-__assignor-__leader")
    assert is_ours(NAMES, "t1.anything")
    assert not is_ours(NAMES, "t2.usage.events")
    assert not is_ours(TopicNames("", "stripemeter"), "usage.eventsX")
    assert logical_name(NAMES, "t1.usage.late") == "usage.late"
    assert logical_name(NAMES, "sm-x-ledger") == "sm-x-ledger"


EVENT = {
    "tenantId": "demo",
    "metric": "requests",
    "customerRef": "acme 42",
    "quantity": 3,
    "ts": "2026-11-20T14:03:11.250Z",
    "idempotencyKey": "req-1",
}


def one_line(kind: Kind, value: bytes | None, key: bytes | None = None) -> str:
    (record,) = decode_record(kind, key, value)
    return text_line(AT, record)


def test_event_line() -> None:
    assert one_line("events", orjson.dumps(EVENT)) == (
        "2025-11-20T14:03:11.250Z usage.events 1@42 event tenant=demo metric=requests "
        'customer="acme 42" quantity=3 ts=2026-11-20T14:03:11.250Z key=req-1'
    )


def test_array_message_gives_one_record_per_element_and_labels_bad_ones() -> None:
    records = decode_record("events", None, orjson.dumps([EVENT, 5, {**EVENT, "tenantId": "other"}]))
    assert [(r.label, r.index, r.tenant) for r in records] == [
        ("event", 0, "demo"),
        ("raw", 1, None),
        ("event", 2, "other"),
    ]
    assert text_line(AT, records[1]).endswith("1@42[1] [raw] JSON is not event shaped: 5")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"\xff\xfe\x00abc", "[binary] 6 bytes, not UTF-8 at byte 0: ff fe 00 61 62 63"),
        (b"hello\nworld\x00", "[raw] not JSON (12 bytes): hello\\nworld\\x00"),
        (b"", "[empty] 0 bytes"),
        (None, "[empty] null value"),
        (b'{"a": 1}', '[raw] JSON is not delta shaped: {"a":1}'),
    ],
)
def test_garbage_is_labelled(value: bytes | None, expected: str) -> None:
    kind: Kind = "deltas" if value == b'{"a": 1}' else "events"
    assert one_line(kind, value).endswith(expected)


def test_big_garbage_is_cut_short() -> None:
    line = one_line("events", b"x" * 500_000)
    assert line.endswith("... (500000 chars)") and len(line) < 300
    binary = one_line("events", b"\x80" * 500_000)
    assert binary.endswith("... (500000 bytes)") and len(binary) < 300


def test_dead_letter_shows_reason_and_the_inputs_tenant() -> None:
    dead = {
        "error": {"code": "invalid_field", "message": "quantity must be >= 0", "field": "quantity"},
        "topic": "t1.usage.events",
        "partition": 0,
        "offset": 3,
        "raw": orjson.dumps({**EVENT, "quantity": -1}).decode(),
    }
    (record,) = decode_record("dlq", None, orjson.dumps(dead))
    assert record.tenant == "demo" and record.customer == "acme 42"
    line = text_line(AT, record)
    assert 'dead-letter code=invalid_field field=quantity message="quantity must be >= 0" tenant=demo' in line
    assert "input=t1.usage.events:0@3" in line
    assert orjson.loads(json_line(AT, record))["record"] == dead  # JSON Lines keep the record as it is


def test_binary_dead_letter_has_no_tenant() -> None:
    dead = {"error": {"code": "not_utf8", "message": "x"}, "topic": "t", "partition": 0, "offset": 1}
    (record,) = decode_record("dlq", None, orjson.dumps({**dead, "raw": "/w==", "rawEncoding": "base64"}))
    assert record.tenant is None
    assert 'raw(base64)="/w=="' in text_line(AT, record)


def test_internal_records_get_names() -> None:
    keyed_item = ["demo", "m", "c", 1_500_000, 1_763_647_391_250, "k", 0, None, None, 0, 5, 1]
    (keyed,) = decode_record("keyed", b"x", orjson.dumps([keyed_item]))
    assert keyed.fields["quantity"] == 1.5 and keyed.fields["source"] == {
        "partition": 0,
        "offset": 5,
        "index": 1,
    }
    (ledger,) = decode_record("ledger", None, orjson.dumps([["late", *keyed_item]]))
    assert text_line(AT, ledger).endswith(
        "ledger outcome=late tenant=demo metric=m customer=c quantity=1.5 ts=2025-11-20T14:03:11.250Z "
        "key=k source=0@5[1]"
    )
    counter_key = b"demo\x1freq\x1fc|1\x1f1763647200000"
    (counter,) = decode_record("counters", counter_key, b"[5000000,3,17,-1]")
    assert text_line(AT, counter).endswith(
        "counter tenant=demo metric=req customer=c|1 bucket=2025-11-20T14:00:00Z value=5 seq=3 "
        "appliedOffset=17"
    )
    (mark,) = decode_record("watermarks", b"demo\x1freq\x1fc", b"1763647391250")
    assert mark.fields["watermark"] == "2025-11-20T14:03:11.250Z"
    (dedupe,) = decode_record("dedupe", b"demo\x1fk1", b'[0,1,2,3,1763647391250,"m","c"]')
    assert dedupe.fields["idempotencyKey"] == "k1" and dedupe.fields["keyedOffset"] == 3
    (gone,) = decode_record("dedupe", b"demo\x1fk1", None)
    assert text_line(AT, gone).endswith("[tombstone] tenant=demo key=k1")
    (bad,) = decode_record("counters", b"\xff", b"[1,2,3,4]")
    assert bad.label == "raw"


def test_internal_records_of_the_current_format_read_as_the_previous_ones() -> None:
    """The record format's version (schemas/versions.py) is no record or field of its own."""
    keyed_item = ["demo", "m", "c", 1_500_000, 1_763_647_391_250, "k", 0, None, None, 0, 5, 1]
    arrays: tuple[tuple[Kind, bytes, bytes], ...] = (
        ("keyed", orjson.dumps([keyed_item]), orjson.dumps([2, keyed_item])),
        ("ledger", orjson.dumps([["late", *keyed_item]]), orjson.dumps([2, ["late", *keyed_item]])),
    )
    for kind, previous, current in arrays:
        assert decode_record(kind, None, current) == decode_record(kind, None, previous)
    values: tuple[tuple[Kind, bytes, bytes, bytes], ...] = (
        ("counters", b"demo\x1freq\x1fc\x1f1763647200000", b"[5000000,3,17,-1]", b'["v2",5000000,3,17,-1]'),
        ("watermarks", b"demo\x1freq\x1fc", b"1763647391250", b'["v2",1763647391250]'),
        (
            "dedupe",
            b"demo\x1fk1",
            b'[0,1,2,3,1763647391250,"m","c"]',
            b'["v2",0,1,2,3,1763647391250,"m","c"]',
        ),
    )
    for kind, key, previous, current in values:
        assert decode_record(kind, key, current) == decode_record(kind, key, previous), kind


def test_drift_and_late_lines() -> None:
    at = datetime(2026, 11, 20, 14, tzinfo=UTC)
    drift = Drift("demo", "m", "c", "2026-11", 10, 9, 1, 0.1, "drift", "flagged", at, causes=[], hours=[])
    assert one_line("drift", encode_drift(drift)).endswith(
        "drift tenant=demo metric=m customer=c period=2026-11 local=10 stripe=9 diffAbs=1 diffPct=0.1 "
        "status=drift action=flagged at=2026-11-20T14:00:00Z"
    )
    late = {**EVENT, "watermark": "2026-11-23T00:00:00.000Z", "lateness": 172800}
    assert one_line("late", orjson.dumps(late)).endswith("watermark=2026-11-23T00:00:00.000Z lateness=172800")


def test_filters_need_the_field() -> None:
    request = TailRequest("t", "t", "events", tenant="demo", customer="acme 42")
    (event,) = decode_record("events", None, orjson.dumps(EVENT))
    (other,) = decode_record("events", None, orjson.dumps({**EVENT, "customerRef": "x"}))
    (garbage,) = decode_record("events", None, b"\x00\xff")
    assert matches(request, event)
    assert not matches(request, other)
    assert not matches(request, garbage)
    assert matches(TailRequest("t", "t", "events"), garbage)


def test_lag_counts_uncommitted_partitions_from_the_log_start() -> None:
    topic = TopicState(
        "t1.usage.events",
        [PartitionState("t1.usage.events", p, 1, (1,), (1,), 2, 10) for p in range(2)],
        {},
    )
    rows = lag_rows(
        {"sm-x-intake": {TopicPartition("t1.usage.events", 0): 7, TopicPartition("gone", 0): 1}},
        {"sm-x-intake": "intake"},
        [topic],
    )
    assert [(r.partition, r.committed, r.end, r.lag) for r in rows] == [(0, 7, 10, 3), (1, None, 10, 8)]


def test_kafka_tool_arguments() -> None:
    assert tool_args("kafka-topics", ["--list"], "h:1") == (
        "org.apache.kafka.tools.TopicCommand",
        ["--bootstrap-server", "h:1", "--list"],
    )
    assert tool_args("kafka-consumer-groups.sh", ["--bootstrap-server=x:2", "--list"], "h:1")[1] == [
        "--bootstrap-server=x:2",
        "--list",
    ]
    assert tool_args("kafka-topics", ["--help"], "h:1")[1] == ["--help"]
    assert tool_args("kafka-dump-log", ["--files", "f"], "h:1")[1] == ["--files", "f"]
    with pytest.raises(UnknownTool):
        tool_args("kafka-nope", [], "h:1")
    cmd = tool_command(
        "kafka-console-consumer", ["--topic", "t"], "h:1", Path("/libs"), Path("/l.properties")
    )
    main = "org.apache.kafka.tools.consumer.ConsoleConsumer"
    assert cmd[cmd.index(main) :] == [main, "--bootstrap-server", "h:1", "--topic", "t"]
    assert cmd[cmd.index("-cp") + 1] == "/libs/*"
    assert "-Dlog4j2.configurationFile=/l.properties" in cmd
