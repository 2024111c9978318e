"""Fixed vectors for the Kafka wire formats: literal bytes and the value they carry, both ways, in the
current record format (2) and the previous release's (1), which a rolling upgrade writes and reads.

Deltas, corrections (control messages), mapping updates and changelog values (counters and watermarks);
dead letters are written only. These bytes never change without a new record format.
"""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest

from stripemeter.schemas import versions
from stripemeter.schemas.corrections import Correction, decode_control, encode_control, is_control
from stripemeter.schemas.dead_letters import dead_letter
from stripemeter.schemas.deltas import Delta, decode_delta, encode_delta, record_version
from stripemeter.schemas.events import InvalidEvent
from stripemeter.schemas.policy_updates import (
    PolicyUpdate,
    decode_policy_update,
    encode_policy_update,
    is_policy_update,
)

DEC_1 = 1_796_083_200_000  # 2026-12-01T00:00:00Z


@pytest.fixture(params=[versions.CURRENT, versions.PREVIOUS])
def written(request: pytest.FixtureRequest) -> Iterator[int]:
    """Each test runs writing the current format, then the previous release's."""
    versions.use_write_version(request.param)
    try:
        yield request.param
    finally:
        versions.use_write_version(versions.CURRENT)


def v2(raw: bytes, version: int, field: bytes = b'"v":2,') -> bytes:
    """The vector in the format written: format 1 is format 2 without its version field."""
    return raw if version == versions.CURRENT else raw.replace(field, b"")


DELTAS = [
    (
        Delta("acme", "api_calls", "cus-42", DEC_1, 1_500_000, 7),
        b'{"v":2,"tenantId":"acme","metric":"api_calls","customerRef":"cus-42","bucket":"2026-12-01T00:00:00Z",'
        b'"total":1.5,"seq":7,"totalMicros":1500000}',
    ),
    (
        Delta("acme", "api_calls", "cus-42", DEC_1, -250_000, 8, 3, 4711),
        b'{"v":2,"tenantId":"acme","metric":"api_calls","customerRef":"cus-42","bucket":"2026-12-01T00:00:00Z",'
        b'"total":-0.25,"seq":8,"totalMicros":-250000,"keyedPartition":3,"keyedOffset":4711}',
    ),
]


@pytest.mark.parametrize(("delta", "raw"), DELTAS)
def test_a_delta_record(written: int, delta: Delta, raw: bytes) -> None:
    assert encode_delta(delta) == v2(raw, written)
    assert decode_delta(v2(raw, written)) == delta
    assert record_version(v2(raw, written)) == written


def test_a_delta_of_a_release_that_wrote_no_exact_total_is_read_from_its_total() -> None:
    raw = b'{"tenantId":"acme","metric":"api_calls","customerRef":"cus-42","bucket":"2026-12-01T00:00:00Z",'
    raw += b'"total":1.5,"seq":7}'
    assert decode_delta(raw) == Delta("acme", "api_calls", "cus-42", DEC_1, 1_500_000, 7)


CORRECTIONS = [
    Correction("rp_1", "acme", "api_calls", "cus-42", DEC_1, "add", -2_000_000, DEC_1 + 60_000),
    Correction(
        "rp_2", "acme", "api_calls", "cus-42", DEC_1, "events", 3_500_000, DEC_1 + 90_000, 2, 1_000_000
    ),
    Correction("rp_3", "acme", "seats", "cus-42", DEC_1, "last", 4_000_000, DEC_1 + 120_000),
]
CONTROL = (
    b'{"corrections":[["rp_1","acme","api_calls","cus-42",1796083200000,"add",-2000000,1796083260000],'
    b'["rp_2","acme","api_calls","cus-42",1796083200000,"events",3500000,1796083290000,2,1000000],'
    b'["rp_3","acme","seats","cus-42",1796083200000,"last",4000000,1796083320000]],"v":2}'
)


def test_a_control_message_of_corrections(written: int) -> None:
    raw = v2(CONTROL, written, b',"v":2')
    assert encode_control(CORRECTIONS) == raw
    assert decode_control(raw) == CORRECTIONS
    assert is_control(raw) and not is_policy_update(raw)


POLICY_UPDATES = [
    (
        PolicyUpdate("acme", "seats", 12, "last", 3_600_000, None, DEC_1),
        b'{"policy":{"tenantId":"acme","metric":"seats","version":12,"aggregation":"last","latenessMs":3600000,'
        b'"horizonMs":null,"reaggregateFromMs":1796083200000},"v":2}',
    ),
    (
        PolicyUpdate("acme", "api_calls", 13, "sum", 0, DEC_1 - 86_400_000),
        b'{"policy":{"tenantId":"acme","metric":"api_calls","version":13,"aggregation":"sum","latenessMs":0,'
        b'"horizonMs":1795996800000,"reaggregateFromMs":null},"v":2}',
    ),
]


@pytest.mark.parametrize(("update", "raw"), POLICY_UPDATES)
def test_a_mapping_update(written: int, update: PolicyUpdate, raw: bytes) -> None:
    raw = v2(raw, written, b',"v":2')
    assert encode_policy_update(update) == raw
    assert decode_policy_update(raw) == update
    assert is_policy_update(raw) and is_control(raw)


@pytest.mark.parametrize(
    ("value", "raw"),
    [
        # a counter: value, seq, applied offset, newest ts, sum, events, newest value, adjusted, aggregation
        ([1_500_000, 7, 4711, DEC_1 + 1, 1_500_000, 2, 500_000, 0, 0],
         b'["v2",1500000,7,4711,1796083200001,1500000,2,500000,0,0]'),
        # a counter whose sum left 64 bits (null), re-aggregated to last
        ([4_000_000, 9, 12, DEC_1, None, 3, 4_000_000, -1_000_000, 2],
         b'["v2",4000000,9,12,1796083200000,null,3,4000000,-1000000,2]'),
        # a counter from before the per-aggregation totals
        ([2_000_000, 1, 5, DEC_1], b'["v2",2000000,1,5,1796083200000]'),
    ],
)  # fmt: skip
def test_a_changelog_value(written: int, value: list[int | None], raw: bytes) -> None:
    raw = v2(raw, written, b'"v2",')
    assert versions.dump_value(value) == raw
    assert versions.load_value(raw) == value


def test_a_watermark_changelog_value(written: int) -> None:
    raw = b'["v2",1796083200000]' if written == versions.CURRENT else b"1796083200000"
    assert versions.dump_int(DEC_1) == raw
    assert versions.load_int(raw) == DEC_1


def test_a_changelog_value_of_a_later_format_stops_the_reader() -> None:
    with pytest.raises(versions.UnknownRecordVersion):
        versions.load_value(b'["v3",1,2]')
    with pytest.raises(versions.UnknownRecordVersion):
        versions.load_int(b'["v3",1]')


@pytest.mark.parametrize(
    ("error", "raw", "expected"),
    [
        (
            InvalidEvent("invalid_field", "quantity must be a number", "quantity"),
            b'{"tenantId":"acme","quantity":"x"}',
            b'{"error":{"code":"invalid_field","message":"quantity must be a number","field":"quantity"},'
            b'"topic":"usage.events","partition":3,"offset":4711,"raw":"{\\"tenantId\\":\\"acme\\",\\"quantity\\":\\"x\\"}"}',
        ),
        (
            InvalidEvent("invalid_json", "not JSON"),
            b"\xff\xfe",
            b'{"error":{"code":"invalid_json","message":"not JSON"},"topic":"usage.events","partition":3,'
            b'"offset":4711,"raw":"//4=","rawEncoding":"base64"}',
        ),
        (
            InvalidEvent("invalid_json", "no message"),
            None,
            b'{"error":{"code":"invalid_json","message":"no message"},"topic":"usage.events","partition":3,'
            b'"offset":4711,"raw":null}',
        ),
    ],
)
def test_a_dead_letter(error: InvalidEvent, raw: bytes | None, expected: bytes) -> None:
    assert dead_letter(error, "usage.events", 3, 4711, raw) == expected
    decoded = orjson.loads(expected)
    assert (decoded["topic"], decoded["partition"], decoded["offset"]) == ("usage.events", 3, 4711)
