"""Record formats: this release reads the previous release's records and its own, writes either (the
write version setting), and stops at a record of a later release instead of counting it wrongly."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest

from stripemeter.core.counting import counter_key, stream_key
from stripemeter.core.memory_state import MemoryState
from stripemeter.core.metering import Metering
from stripemeter.domain.config import ConfigError, load_settings
from stripemeter.domain.policy import MetricPolicy, Policies
from stripemeter.schemas import versions
from stripemeter.schemas.corrections import Correction, decode_control, encode_control
from stripemeter.schemas.deltas import Delta, decode_delta, encode_delta, record_version
from stripemeter.schemas.events import UsageEvent
from stripemeter.schemas.late import LateRecord, encode_late
from stripemeter.schemas.packing import pack_arrays
from stripemeter.schemas.policy_updates import PolicyUpdate, decode_policy_update, encode_policy_update
from stripemeter.schemas.records import Source, decode_batch, encode_batch, encode_keyed
from stripemeter.schemas.versions import UnknownRecordVersion

HOUR = 3_600_000
T0 = 1_794_988_800_000  # an hour boundary


@pytest.fixture
def previous_format() -> Iterator[None]:
    """Write the previous release's format, as during a rolling upgrade."""
    versions.use_write_version(versions.PREVIOUS)
    yield
    versions.use_write_version(versions.CURRENT)


def item(key: str, micros: int, ts: int, src: int) -> list[object]:
    return encode_keyed(UsageEvent("t", "m", "c", micros, ts, key, False, None, None), Source(0, src, 0))


def total(counters: MemoryState, bucket: int = T0) -> int:
    raw = counters.get(0, counter_key("t", "m", "c", bucket).encode())
    return int(versions.load_value(raw)[0]) if raw else 0


def make() -> tuple[Metering, MemoryState, MemoryState, MemoryState]:
    dedupe, counters, watermarks = MemoryState(), MemoryState(), MemoryState()
    return Metering(dedupe, counters, watermarks, Policies(MetricPolicy(lateness_ms=2 * HOUR))), *(
        dedupe,
        counters,
        watermarks,
    )


def test_the_default_write_version_is_the_current_format() -> None:
    assert versions.write_version() == versions.CURRENT == load_settings({}).record_write_version
    batch = encode_batch([item("k", 1, T0, 1)])
    assert batch.startswith(b"[2,[") and decode_batch(batch) == [item("k", 1, T0, 1)]
    assert versions.dump_value([1, 2]) == b'["v2",1,2]' and versions.dump_int(-5) == b'["v2",-5]'
    assert all(
        orjson.loads(v) for v in (versions.dump_value([1]), versions.dump_int(0))
    )  # JSON: Faust restores it


def test_the_write_version_setting_takes_1_or_2_only() -> None:
    assert load_settings({"STRIPEMETER_RECORD_WRITE_VERSION": "1"}).record_write_version == 1
    for wrong in ("0", "3", "two"):
        with pytest.raises(ConfigError) as error:
            load_settings({"STRIPEMETER_RECORD_WRITE_VERSION": wrong})
        assert error.value.field == "STRIPEMETER_RECORD_WRITE_VERSION"
    with pytest.raises(ValueError):
        versions.use_write_version(3)


@pytest.mark.usefixtures("previous_format")
def test_pinned_to_the_previous_version_every_record_is_as_the_previous_release_wrote_it() -> None:
    keyed = [item("k", 1, T0, 1)]
    assert encode_batch(keyed) == orjson.dumps(keyed)
    assert pack_arrays([orjson.dumps(i) for i in keyed], 4096) == [orjson.dumps(keyed)]
    assert versions.dump_value([1, None]) == b"[1,null]" and versions.dump_int(42) == b"42"
    delta = encode_delta(Delta("t", "m", "c", T0, 5, 1, 0, 9))
    assert b'"v"' not in delta and record_version(delta) == 1
    assert b'"v"' not in encode_control([Correction("x", "t", "m", "c", T0, "add", 1, T0)])
    assert b'"v"' not in encode_policy_update(PolicyUpdate("t", "m", 2, "sum", 0, None))
    event = UsageEvent("t", "m", "c", 1, T0, "k", False, None, None)
    assert "v" not in orjson.loads(encode_late(LateRecord(event, T0, 0)))


def test_records_of_both_formats_are_read() -> None:
    keyed = [item("k", 1, T0, 1)]
    assert decode_batch(orjson.dumps(keyed)) == decode_batch(encode_batch(keyed)) == keyed
    assert decode_batch(b"[]") == decode_batch(b"[2]") == []
    delta = Delta("t", "m", "c", T0, 5, 1, 0, 9)
    current = encode_delta(delta)
    assert current.startswith(b'{"v":2,') and record_version(current) == 2
    previous = orjson.dumps({k: v for k, v in orjson.loads(current).items() if k != "v"})
    assert decode_delta(previous) == decode_delta(current) == delta
    correction = Correction("x", "t", "m", "c", T0, "add", 1, T0)
    new = encode_control([correction])
    assert orjson.loads(new)["v"] == 2
    assert decode_control(new) == decode_control(
        b'{"corrections":[["x","t","m","c",%d,"add",1,%d]]}' % (T0, T0)
    )
    update = PolicyUpdate("t", "m", 2, "sum", 0, None)
    assert decode_policy_update(encode_policy_update(update)) == update
    assert versions.load_value(b"[1,null]") == versions.load_value(b'["v2",1,null]') == [1, None]
    assert versions.load_int(b"-7") == versions.load_int(b'["v2",-7]') == -7
    assert versions.array_version(b"[[1]]") == versions.array_version(b"[]") == 1
    assert versions.array_version(b"[2,[1]]") == 2 and versions.array_version(b"[17,[1]]") == 17


def test_a_record_of_a_later_version_is_refused_as_such() -> None:
    for read in (
        lambda: decode_batch(b"[3,[1]]"),
        lambda: decode_delta(b'{"v":3,"tenantId":"t"}'),
        lambda: decode_control(b'{"corrections":[],"v":3}'),
        lambda: decode_policy_update(b'{"policy":{},"v":3}'),
        lambda: versions.load_value(b'["v3",1]'),
        lambda: versions.load_int(b'["v3",5]'),
    ):
        with pytest.raises(UnknownRecordVersion) as error:
            read()
        assert error.value.version == 3 and "STRIPEMETER_RECORD_WRITE_VERSION" in str(error.value)
    assert not issubclass(UnknownRecordVersion, ValueError)  # never set aside as a poison message
    with pytest.raises(ValueError):
        decode_batch(b"[0,[1]]")  # not a version at all: a malformed message, set aside as before


def test_state_the_previous_release_stored_is_read_and_kept_exact(previous_format: None) -> None:
    """Dedupe entries, counters and watermarks written in the previous format; then the current format
    is written: a duplicate of an event counted before still counts once, the counter goes on."""
    m, dedupe, counters, watermarks = make()
    m.process(0, 0, [item("k1", 5, T0, 1), item("k2", 1, T0, 2)])
    assert total(counters) == 6
    stored = counters.get(0, counter_key("t", "m", "c", T0).encode())
    assert stored is not None and stored.startswith(b"[")  # the previous format
    versions.use_write_version(versions.CURRENT)  # unpinned: this worker now writes the current format
    # k1 re-sent by intake (same source: no trace), k1 from another input (a duplicate), k3 new
    m.process(0, 1, [item("k1", 5, T0, 1), item("k1", 5, T0, 7), item("k3", 2, T0 + 1, 3)])
    assert total(counters) == 8
    out = m.take_outcomes()
    assert [row[0] for row in out.ledger] == ["counted", "counted", "duplicate", "counted"]
    stored = counters.get(0, counter_key("t", "m", "c", T0).encode())
    assert stored is not None and stored.startswith(b'["v2",')
    watermark = watermarks.get(0, stream_key("t", "m", "c").encode())
    assert watermark == versions.dump_int(T0 + 1)
    # a too-late event is judged against the watermark whichever format stored it
    m.process(0, 2, [item("old", 1, T0 - 3 * HOUR, 4)])
    assert m.take_outcomes().counts["late"] == 1 and total(counters) == 8
    assert len(dedupe.data[0]) == 3


def test_a_keyed_message_of_a_later_version_is_not_half_processed() -> None:
    m, dedupe, counters, watermarks = make()
    assert m.handle(0, 0, encode_batch([item("k1", 5, T0, 1)]), T0)
    before = (dict(dedupe.data[0]), dict(counters.data[0]), dict(watermarks.data[0]))
    m.take_outcomes()
    with pytest.raises(UnknownRecordVersion):
        m.handle(0, 1, b"[3," + orjson.dumps(item("k2", 5, T0, 2)) + b"]", T0)
    # a stored value of a later version met in the middle of a message: what was staged is undone
    counters.put(0, counter_key("t", "m", "c", T0).encode(), b'["v3",0]')
    with pytest.raises(UnknownRecordVersion):
        m.handle(0, 2, encode_batch([item("k3", 1, T0, 3)]), T0)
    assert dedupe.data[0] == before[0] and watermarks.data[0] == before[2]
    out = m.take_outcomes()
    assert out.ledger == [] and out.dead == [] and not out.counts


def test_pinned_again_after_the_current_format_was_written_both_are_still_read() -> None:
    """The setting changed from 2 back to 1 (re-pinning before a rollback): state stored in format 2
    is read, what is written from then on is format 1, and nothing counts twice."""
    m, dedupe, counters, watermarks = make()
    m.process(0, 0, [item("k1", 5, T0, 1)])
    assert dedupe.data[0][b"t\x1fk1"].startswith(b'["v2",')
    versions.use_write_version(versions.PREVIOUS)
    try:
        m.process(0, 1, [item("k1", 5, T0, 9), item("k2", 1, T0 + 1, 2)])
        assert dedupe.data[0][b"t\x1fk2"].startswith(b"[0,2,")  # the previous format
        stored = counters.get(0, counter_key("t", "m", "c", T0).encode())
        assert stored is not None and stored.startswith(b"[6,2,1,")  # total 6, seq 2, applied offset 1
        assert watermarks.get(0, stream_key("t", "m", "c").encode()) == str(T0 + 1).encode()
    finally:
        versions.use_write_version(versions.CURRENT)
    assert total(counters) == 6
    assert [row[0] for row in m.take_outcomes().ledger] == ["counted", "duplicate", "counted"]
