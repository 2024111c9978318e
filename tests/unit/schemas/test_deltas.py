from __future__ import annotations

from datetime import datetime

import orjson

from stripemeter.adapters.postgres.counters import latest_per_counter
from stripemeter.schemas.deltas import Delta, decode_delta, encode_delta


def test_delta_record_tells_which_keyed_message_it_has_applied() -> None:
    delta = Delta("demo", "requests", "acme", 1_794_988_800_000, 1_500_000, 3, 1, 4711)
    record = orjson.loads(encode_delta(delta))
    assert (record["keyedPartition"], record["keyedOffset"]) == (1, 4711)
    assert decode_delta(encode_delta(delta)) == delta


def test_delta_record_has_the_contract_fields() -> None:
    raw = encode_delta(Delta("demo", "requests", "acme", 1_794_988_800_000, 1_500_000, 3))
    assert orjson.loads(raw) == {
        "v": 2,
        "tenantId": "demo",
        "metric": "requests",
        "customerRef": "acme",
        "bucket": "2026-11-18T08:00:00Z",
        "total": 1.5,
        "seq": 3,
        "totalMicros": 1_500_000,
    }
    assert decode_delta(raw) == Delta("demo", "requests", "acme", 1_794_988_800_000, 1_500_000, 3)


def test_latest_per_counter_keeps_highest_seq() -> None:
    a1 = Delta("t", "m", "a", 0, 1, 1)
    a3 = Delta("t", "m", "a", 0, 3, 3)
    a2 = Delta("t", "m", "a", 0, 2, 2)
    b = Delta("t", "m", "b", 0, 9, 1)
    assert sorted(latest_per_counter([a1, a3, a2, b]), key=lambda d: d.customer_ref) == [a3, b]


def test_a_delta_of_any_year_decodes_to_itself() -> None:
    """The bucket's year is always four digits: ``strftime("%Y")`` wrote the year 999 as ``999``, and
    such a delta could not be read back (the writer stopped on it)."""
    for bucket in ("0001-01-01T00:00:00Z", "0999-01-01T05:00:00Z", "1969-12-31T23:00:00Z",
                   "1970-01-01T00:00:00Z", "2026-11-18T08:00:00Z", "9999-12-31T23:00:00Z"):  # fmt: skip
        ms = int(datetime.fromisoformat(bucket.replace("Z", "+00:00")).timestamp() * 1000)
        delta = Delta("t", "m", "c", ms, 1_000_000, 1)
        assert orjson.loads(encode_delta(delta))["bucket"] == bucket
        assert decode_delta(encode_delta(delta)) == delta
