"""Applying changelog records in bulk: what Faust's own reader would leave in the store."""

from __future__ import annotations

from pathlib import Path

from faust.types import TP

from stripemeter.adapters.kafka.changelog_reader import apply_records
from tests.faust_store import OFFSET_KEY, Store


class Record:
    def __init__(self, offset: int, key: bytes, value: bytes | None):
        self.offset, self.key, self.value = offset, key, value


def contents(store: Store) -> dict[bytes, bytes]:
    return {bytes(k): bytes(v) for k, v in store.db.items()}  # type: ignore[arg-type]  # raw mode


def test_the_last_record_of_a_key_wins_a_tombstone_deletes_and_the_offset_follows(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    tp = TP("app-dedupe-changelog", 0)
    first = [Record(0, b"a", b"1"), Record(1, b"b", b"1"), Record(2, b"a", b"2"), Record(3, b"c", b"1")]
    assert apply_records(store, tp, first, persisted=3) == 4
    assert contents(store) == {b"a": b"2", b"b": b"1", b"c": b"1", OFFSET_KEY: b"3"}

    second = [Record(4, b"b", None), Record(6, b"c", b"2")]  # offset 5 compacted away
    assert apply_records(store, tp, second, persisted=6) == 2
    assert contents(store) == {b"a": b"2", b"c": b"2", OFFSET_KEY: b"6"}
    store.db.close()


def test_records_past_the_end_are_left_for_faust(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    tp = TP("app-dedupe-changelog", 0)
    records = [Record(0, b"a", b"1"), Record(1, b"a", b"2"), Record(2, b"b", b"1")]
    assert apply_records(store, tp, records, persisted=0) == 1
    assert contents(store) == {b"a": b"1", OFFSET_KEY: b"0"}
    store.db.close()
