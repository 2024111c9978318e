"""ChangelogState's reads and writes against a real RocksDB, with and without remembered values."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import rocksdict

from stripemeter.adapters.kafka.changelog_state import ChangelogState


def state(tmp_path: Path, remember: int = 0) -> tuple[ChangelogState, Any]:
    """A ChangelogState over one open RocksDB (partition 0), shaped like Faust's table and store."""
    options = rocksdict.Options(raw_mode=True)
    options.create_if_missing(True)
    db = rocksdict.Rdict(str(tmp_path / "p0"), options=options)
    store = SimpleNamespace(_dbs={0: db}, _db_for_partition=lambda partition: db)
    return ChangelogState(SimpleNamespace(data=store), remember=remember), db  # type: ignore[arg-type]


def test_staged_writes_are_read_back_then_reach_rocksdb(tmp_path: Path) -> None:
    kv, db = state(tmp_path)
    kv.put(0, b"a", b"1")
    assert kv.get(0, b"a") == b"1" and db.get(b"a") is None
    assert kv.take_staged() == {0: {b"a": b"1"}}
    assert db.get(b"a") == b"1" and kv.get(0, b"a") == b"1"
    kv.put(0, b"a", None)
    kv.take_staged()
    assert db.get(b"a") is None and kv.get(0, b"a") is None


def test_remembered_values_follow_this_workers_writes(tmp_path: Path) -> None:
    kv, db = state(tmp_path, remember=10)
    db[b"c"] = b"old"
    assert kv.get(0, b"c") == b"old"
    kv.put(0, b"c", b"new")
    kv.take_staged()
    assert kv.get(0, b"c") == b"new" == db.get(b"c")
    kv.put(0, b"c", None)
    kv.take_staged()
    assert kv.get(0, b"c") is None and db.get(b"c") is None


def test_a_value_written_elsewhere_is_seen_only_after_forget(tmp_path: Path) -> None:
    """Why the worker forgets on every rebalance: a changelog restore writes RocksDB directly."""
    kv, db = state(tmp_path, remember=10)
    assert kv.get(0, b"k") is None
    db[b"k"] = b"restored"
    assert kv.get(0, b"k") is None  # remembered
    kv.forget()
    assert kv.get(0, b"k") == b"restored"


def test_remembered_values_are_bounded(tmp_path: Path) -> None:
    kv, db = state(tmp_path, remember=2)
    for key in (b"x", b"y", b"z"):  # the third read goes over the bound: all are forgotten
        kv.get(0, key)
    db[b"x"] = b"1"
    assert kv.get(0, b"x") == b"1"
    for key in (b"p", b"q", b"r"):
        kv.put(0, key, b"v")
    kv.take_staged()  # three written: over the bound again
    db[b"x"] = b"2"
    assert kv.get(0, b"x") == b"2"


def test_get_many_sees_staged_writes_and_misses(tmp_path: Path) -> None:
    for remember in (0, 10):
        kv, db = state(tmp_path / str(remember), remember=remember)
        db[b"a"] = b"stored"
        db[b"b"] = b"stored"
        kv.put(0, b"b", b"staged")
        kv.put(0, b"c", None)
        assert kv.get_many(0, [b"a", b"b", b"c", b"d"]) == [b"stored", b"staged", None, None]
