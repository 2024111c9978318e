"""Fixed test vectors of the internal records: the bytes this release and the previous one write,
and the named record each stands for, both ways. A change of a record's definition that changes its
bytes fails here (rolling upgrades read the other release's bytes)."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest

from stripemeter.schemas import versions
from stripemeter.schemas.dedupe import (
    DedupeEntry,
    correction_entry,
    decode_entry,
    encode_entry,
)
from stripemeter.schemas.event_json import event_from_json, event_json
from stripemeter.schemas.events import UsageEvent
from stripemeter.schemas.late import LateRecord, decode_late, encode_late
from stripemeter.schemas.ledger_items import (
    WIRE_FIELDS,
    LedgerItem,
    decode_ledger_item,
    encode_ledger_item,
    ledger_item,
)
from stripemeter.schemas.records import (
    KeyedItem,
    Source,
    as_keyed,
    decode_batch,
    decode_keyed,
    encode_batch,
    keyed_item,
)
from stripemeter.schemas.versions import UnknownRecordVersion

EVENT = UsageEvent(
    "acme", "api_calls", "cus_1", 2_500_000, 1_794_988_800_123, "k-1", False, "res-9", {"region": "eu"}
)
KEYED = KeyedItem(
    tenant_id="acme",
    metric="api_calls",
    customer_ref="cus_1",
    quantity_micros=2_500_000,
    ts_ms=1_794_988_800_123,
    idempotency_key="k-1",
    key_derived=0,
    resource_id="res-9",
    meta={"region": "eu"},
    source_partition=3,
    source_offset=41,
    source_index=2,
)
KEYED_ITEM = b'["acme","api_calls","cus_1",2500000,1794988800123,"k-1",0,"res-9",{"region":"eu"},3,41,2]'
KEYED_MESSAGE = {1: b"[" + KEYED_ITEM + b"]", 2: b"[2," + KEYED_ITEM + b"]"}

LEDGER = LedgerItem("counted", KEYED)
LEDGER_ITEM = (
    b'["counted","acme","api_calls","cus_1",2500000,1794988800123,"k-1",0,"res-9",{"region":"eu"},3,41,2]'
)

ENTRY = DedupeEntry(
    source_partition=3,
    source_offset=41,
    source_index=2,
    keyed_offset=17,
    ts_ms=1_794_988_800_123,
    metric="api_calls",
    customer_ref="cus_1",
)
ENTRY_VALUE = {
    1: b'[3,41,2,17,1794988800123,"api_calls","cus_1"]',
    2: b'["v2",3,41,2,17,1794988800123,"api_calls","cus_1"]',
}

LATE = LateRecord(
    EVENT._replace(ts_ms=1_794_981_600_123), watermark_ms=1_794_988_800_123, lateness_ms=3_600_000
)
LATE_FIELDS = (
    b'{"tenantId":"acme","metric":"api_calls","customerRef":"cus_1","quantity":2.5,'
    b'"ts":"2026-11-18T06:00:00.123Z","idempotencyKey":"k-1","resourceId":"res-9","meta":{"region":"eu"},'
    b'"watermark":"2026-11-18T08:00:00.123Z","lateness":3600'
)
LATE_RECORD = {1: LATE_FIELDS + b"}", 2: LATE_FIELDS + b',"v":2}'}


@pytest.fixture(params=[versions.PREVIOUS, versions.CURRENT], ids=["format-1", "format-2"])
def written(request: pytest.FixtureRequest) -> Iterator[int]:
    """Each format written in turn (the previous one during a rolling upgrade)."""
    versions.use_write_version(request.param)
    yield request.param
    versions.use_write_version(versions.CURRENT)


def test_keyed_item_vector_both_ways(written: int) -> None:
    item = keyed_item(EVENT, 3, 41, 2)
    assert orjson.dumps(item) == KEYED_ITEM
    assert encode_batch([item]) == KEYED_MESSAGE[written]
    for message in KEYED_MESSAGE.values():
        [decoded] = decode_batch(message)
        assert as_keyed(decoded) == KEYED
        assert decode_keyed(decoded) == (EVENT, Source(3, 41, 2))


def test_keyed_item_fields_are_the_events_then_its_source() -> None:
    assert KeyedItem._fields == (*UsageEvent._fields, "source_partition", "source_offset", "source_index")
    derived = EVENT._replace(key_derived=True, resource_id=None, meta=None)
    assert as_keyed(keyed_item(derived, 0, 1, 0)) == KEYED._replace(
        key_derived=1, resource_id=None, meta=None, source_partition=0, source_offset=1, source_index=0
    )
    assert as_keyed(keyed_item(derived, 0, 1, 0)).event() == derived


def test_a_keyed_item_of_another_length_is_refused() -> None:
    with pytest.raises(TypeError):
        as_keyed(orjson.loads(KEYED_ITEM)[:-1])


def test_ledger_item_vector_both_ways() -> None:
    assert orjson.dumps(ledger_item("counted", orjson.loads(KEYED_ITEM))) == LEDGER_ITEM
    assert orjson.dumps(encode_ledger_item(LEDGER)) == LEDGER_ITEM
    assert decode_ledger_item(orjson.loads(LEDGER_ITEM)) == LEDGER
    assert ("outcome", *KeyedItem._fields) == WIRE_FIELDS


def test_dedupe_entry_vector_both_ways(written: int) -> None:
    assert encode_entry(ENTRY) == ENTRY_VALUE[written]
    for value in ENTRY_VALUE.values():
        assert decode_entry(value) == ENTRY


def test_a_corrections_dedupe_entry_has_no_source() -> None:
    assert correction_entry(17, 1_794_988_800_123, "api_calls", "cus_1") == (
        b'["v2",-1,-1,-1,17,1794988800123,"api_calls","cus_1"]'
    )
    assert decode_entry(correction_entry(17, 5, "m", "c")) == DedupeEntry(-1, -1, -1, 17, 5, "m", "c")


def test_a_dedupe_entry_of_a_later_format_is_refused() -> None:
    with pytest.raises(UnknownRecordVersion):
        decode_entry(b'["v3",3,41,2,17,1794988800123,"api_calls","cus_1"]')


def test_late_record_vector_both_ways(written: int) -> None:
    assert encode_late(LATE) == LATE_RECORD[written]
    for record in LATE_RECORD.values():
        assert decode_late(record) == LATE
    with pytest.raises(UnknownRecordVersion):
        decode_late(LATE_FIELDS + b',"v":3}')


def test_event_json_without_the_optional_fields_both_ways() -> None:
    bare = EVENT._replace(quantity_micros=3_000_000, resource_id=None, meta=None)
    fields = event_json(bare)
    assert orjson.dumps(fields) == (
        b'{"tenantId":"acme","metric":"api_calls","customerRef":"cus_1","quantity":3,'
        b'"ts":"2026-11-18T08:00:00.123Z","idempotencyKey":"k-1"}'
    )
    assert event_from_json(fields) == bare
