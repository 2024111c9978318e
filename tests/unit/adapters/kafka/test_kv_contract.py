"""The key-value contract both state stores promise (``metering.KV`` plus ``items``), run against each.

``MemoryState`` applies writes at once; ``ChangelogState`` stages them in front of RocksDB until the
checkpoint takes them (``take_staged``). Reads and savepoints must not tell the two apart, whether a
value is still staged or already in RocksDB: every test that can, runs with the earlier writes
``settled`` (taken into RocksDB) and without. What only ChangelogState has (staging, remembered
values, ``forget``) stays in test_state.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol

import pytest
import rocksdict

from stripemeter.adapters.kafka.changelog_state import ChangelogState
from stripemeter.core.memory_state import MemoryState

OFFSET_KEY = b"__faust\0offset__"  # where Faust's RocksDB store keeps a partition's persisted offset


class Store(Protocol):
    def get(self, partition: int, key: bytes) -> bytes | None: ...

    def get_many(self, partition: int, keys: list[bytes]) -> list[bytes | None]: ...

    def put(self, partition: int, key: bytes, value: bytes | None) -> None: ...

    def savepoint(self) -> None: ...

    def release(self) -> None: ...

    def rollback(self) -> None: ...

    def items(self, partition: int, from_key: bytes | None = None) -> Iterator[tuple[bytes, bytes]]: ...


@dataclass
class Subject:
    kv: Store
    settle: Callable[[], None]  # what a checkpoint does to the writes so far (nothing, in memory)


def changelog_state(tmp_path: Path, remember: int) -> ChangelogState:
    """A ChangelogState over RocksDB databases opened per partition on first use, shaped like Faust's
    table and store (as in test_state.py, with any partition)."""
    options = rocksdict.Options(raw_mode=True)
    options.create_if_missing(True)
    dbs: dict[int, Any] = {}

    def open_partition(partition: int) -> Any:
        dbs[partition] = rocksdict.Rdict(str(tmp_path / f"p{partition}"), options=options)
        return dbs[partition]

    store = SimpleNamespace(_dbs=dbs, _db_for_partition=open_partition, offset_key=OFFSET_KEY)
    return ChangelogState(SimpleNamespace(data=store), remember=remember)  # type: ignore[arg-type]


@pytest.fixture(params=["memory", "changelog", "changelog-remembering"])
def subject(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Subject]:
    if request.param == "memory":
        yield Subject(MemoryState(), lambda: None)
        return
    state = changelog_state(tmp_path, remember=100 if request.param == "changelog-remembering" else 0)

    def settle() -> None:
        state.take_staged()

    yield Subject(state, settle)
    for db in state.databases():
        db.close()


SETTLED = pytest.mark.parametrize("settled", [False, True], ids=["staged", "settled"])


def contents(kv: Store, partition: int, keys: list[bytes]) -> dict[bytes, bytes | None]:
    return dict(zip(keys, kv.get_many(partition, keys), strict=True))


# --- reads and writes ----------------------------------------------------------------------------------


@SETTLED
def test_a_value_written_is_read_back_and_none_deletes_it(subject: Subject, settled: bool) -> None:
    kv = subject.kv
    assert kv.get(0, b"k") is None
    kv.put(0, b"k", b"1")
    if settled:
        subject.settle()
    assert kv.get(0, b"k") == b"1"
    kv.put(0, b"k", b"2")
    assert kv.get(0, b"k") == b"2"
    kv.put(0, b"k", None)
    assert kv.get(0, b"k") is None
    subject.settle()
    assert kv.get(0, b"k") is None


def test_deleting_a_key_that_was_never_written_is_harmless(subject: Subject) -> None:
    kv = subject.kv
    kv.put(0, b"never", None)
    subject.settle()
    assert kv.get(0, b"never") is None
    assert kv.get_many(0, [b"never"]) == [None]


def test_an_empty_value_is_a_value_not_a_delete(subject: Subject) -> None:
    kv = subject.kv
    kv.put(0, b"k", b"")
    assert kv.get(0, b"k") == b""
    subject.settle()
    assert kv.get(0, b"k") == b""
    assert kv.get_many(0, [b"k"]) == [b""]


@SETTLED
def test_get_many_answers_in_the_order_asked_with_none_for_misses(subject: Subject, settled: bool) -> None:
    kv = subject.kv
    kv.put(0, b"a", b"1")
    kv.put(0, b"b", b"2")
    kv.put(0, b"gone", b"x")
    if settled:
        subject.settle()
    kv.put(0, b"c", b"3")  # always staged: reads mix both places
    kv.put(0, b"gone", None)
    assert kv.get_many(0, [b"c", b"missing", b"a", b"gone", b"b"]) == [b"3", None, b"1", None, b"2"]
    assert kv.get_many(0, [b"b", b"a", b"b"]) == [b"2", b"1", b"2"]  # a key asked twice, answered twice
    assert kv.get_many(0, []) == []
    keys = [b"a", b"b", b"c", b"gone", b"missing"]
    assert kv.get_many(0, keys) == [kv.get(0, key) for key in keys]


@SETTLED
def test_partitions_are_independent(subject: Subject, settled: bool) -> None:
    kv = subject.kv
    kv.put(0, b"k", b"zero")
    kv.put(1, b"k", b"one")
    kv.put(1, b"only-in-1", b"x")
    if settled:
        subject.settle()
    assert (kv.get(0, b"k"), kv.get(1, b"k"), kv.get(2, b"k")) == (b"zero", b"one", None)
    assert kv.get_many(0, [b"k", b"only-in-1"]) == [b"zero", None]
    kv.put(1, b"k", None)
    assert kv.get(0, b"k") == b"zero" and kv.get(1, b"k") is None
    subject.settle()
    assert kv.get(0, b"k") == b"zero" and kv.get(1, b"k") is None


# --- savepoints --------------------------------------------------------------------------------------


@SETTLED
def test_rollback_undoes_every_write_since_the_savepoint(subject: Subject, settled: bool) -> None:
    """A message whose handling fails halfway leaves no trace: new keys vanish, overwritten and deleted
    keys hold their values from before the savepoint again."""
    kv = subject.kv
    kv.put(0, b"kept", b"old")
    kv.put(0, b"deleted", b"old")
    if settled:
        subject.settle()
    kv.savepoint()
    kv.put(0, b"kept", b"new")
    kv.put(0, b"deleted", None)
    kv.put(0, b"added", b"new")
    assert contents(kv, 0, [b"kept", b"deleted", b"added"]) == {
        b"kept": b"new",
        b"deleted": None,
        b"added": b"new",
    }
    kv.rollback()
    expected = {b"kept": b"old", b"deleted": b"old", b"added": None}
    assert contents(kv, 0, [b"kept", b"deleted", b"added"]) == expected
    assert {key: kv.get(0, key) for key in expected} == expected
    subject.settle()
    assert contents(kv, 0, [b"kept", b"deleted", b"added"]) == expected


def test_a_key_written_many_times_returns_to_its_value_before_the_savepoint(subject: Subject) -> None:
    kv = subject.kv
    kv.put(0, b"k", b"before")
    kv.savepoint()
    for value in (b"1", None, b"2", b"3"):
        kv.put(0, b"k", value)
    kv.rollback()
    assert kv.get(0, b"k") == b"before"
    kv.savepoint()
    kv.put(0, b"new", b"1")
    kv.put(0, b"new", None)
    kv.put(0, b"new", b"2")
    kv.rollback()
    assert kv.get(0, b"new") is None


@SETTLED
def test_rollback_spans_partitions(subject: Subject, settled: bool) -> None:
    kv = subject.kv
    kv.put(0, b"k", b"p0")
    kv.put(1, b"k", b"p1")
    if settled:
        subject.settle()
    kv.savepoint()
    kv.put(0, b"k", b"changed")
    kv.put(1, b"k", None)
    kv.put(2, b"k", b"new")
    kv.rollback()
    assert [kv.get(p, b"k") for p in (0, 1, 2)] == [b"p0", b"p1", None]


def test_released_writes_are_kept_and_a_later_rollback_does_not_touch_them(subject: Subject) -> None:
    kv = subject.kv
    kv.put(0, b"k", b"old")
    kv.savepoint()
    kv.put(0, b"k", b"new")
    kv.put(0, b"gone", b"x")
    kv.put(0, b"gone", None)
    kv.release()
    kv.rollback()  # no savepoint open any more: nothing to undo
    assert kv.get_many(0, [b"k", b"gone"]) == [b"new", None]
    subject.settle()
    assert kv.get_many(0, [b"k", b"gone"]) == [b"new", None]


def test_writes_outside_a_savepoint_cannot_be_rolled_back(subject: Subject) -> None:
    kv = subject.kv
    kv.put(0, b"k", b"1")
    kv.rollback()
    assert kv.get(0, b"k") == b"1"
    kv.savepoint()
    kv.rollback()
    kv.put(0, b"k", b"2")  # after the rollback closed the savepoint
    kv.rollback()
    assert kv.get(0, b"k") == b"2"


def test_each_message_gets_its_own_savepoint(subject: Subject) -> None:
    """How the meter uses them: savepoint, then release or rollback, message after message; a rolled
    back message between two kept ones loses only its own writes."""
    kv = subject.kv
    kv.savepoint()
    kv.put(0, b"count", b"1")
    kv.release()
    kv.savepoint()
    kv.put(0, b"count", b"2")
    kv.put(0, b"poison", b"x")
    kv.rollback()
    kv.savepoint()
    kv.put(0, b"count", b"2")
    kv.put(0, b"other", b"y")
    kv.release()
    assert kv.get_many(0, [b"count", b"poison", b"other"]) == [b"2", None, b"y"]


def test_savepoints_do_not_nest_a_new_one_replaces_the_open_one(subject: Subject) -> None:
    """Both stores keep one savepoint: opening another without release or rollback makes the writes
    since the first one permanent; rollback then undoes only those since the second."""
    kv = subject.kv
    kv.savepoint()
    kv.put(0, b"first", b"1")
    kv.savepoint()
    kv.put(0, b"second", b"2")
    kv.put(0, b"first", b"changed")
    kv.rollback()
    assert kv.get_many(0, [b"first", b"second"]) == [b"1", None]


def test_a_rolled_back_store_takes_new_savepoints(subject: Subject) -> None:
    kv = subject.kv
    kv.savepoint()
    kv.put(0, b"k", b"lost")
    kv.rollback()
    kv.rollback()  # a second rollback has nothing left to undo
    assert kv.get(0, b"k") is None
    kv.savepoint()
    kv.put(0, b"k", b"kept")
    kv.release()
    kv.savepoint()
    kv.put(0, b"k", b"lost again")
    kv.rollback()
    assert kv.get(0, b"k") == b"kept"


# --- iteration (once writes are settled: ChangelogState iterates RocksDB only) -------------------------


def test_items_iterate_in_key_order_from_a_key_on(subject: Subject) -> None:
    kv = subject.kv
    for key in (b"c", b"a", b"d", b"b"):
        kv.put(0, key, key.upper())
    kv.put(0, b"d", None)
    kv.put(1, b"other", b"x")
    subject.settle()
    assert list(kv.items(0)) == [(b"a", b"A"), (b"b", b"B"), (b"c", b"C")]
    assert list(kv.items(0, from_key=b"b")) == [(b"b", b"B"), (b"c", b"C")]
    assert list(kv.items(0, from_key=b"bb")) == [(b"c", b"C")]
    assert list(kv.items(0, from_key=b"z")) == []
    assert list(kv.items(2)) == []


def test_writes_during_iteration_do_not_disturb_it(subject: Subject) -> None:
    """The dedupe sweep deletes entries while it iterates them."""
    kv = subject.kv
    for key in (b"a", b"b", b"c"):
        kv.put(0, key, b"v")
    subject.settle()
    seen = []
    for key, _ in kv.items(0):
        seen.append(key)
        kv.put(0, key, None)
        kv.put(0, b"b2", b"new")
    assert seen == [b"a", b"b", b"c"]
    subject.settle()
    assert list(kv.items(0)) == [(b"b2", b"new")]
