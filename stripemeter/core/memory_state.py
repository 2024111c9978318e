"""The key-value state of ``state.ChangelogState`` in memory: the same contract, for unit tests and
anything that wants the metering rules without RocksDB. Writes apply at once (there is no changelog);
a savepoint can still undo them."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

from stripemeter.core.undo import UndoLog


class MemoryState:
    def __init__(self) -> None:
        self.data: dict[int, dict[bytes, bytes]] = defaultdict(dict)
        self._undo = UndoLog()

    def get(self, partition: int, key: bytes) -> bytes | None:
        return self.data[partition].get(key)

    def get_many(self, partition: int, keys: list[bytes]) -> list[bytes | None]:
        return [self.get(partition, key) for key in keys]

    def put(self, partition: int, key: bytes, value: bytes | None) -> None:
        store = self.data[partition]
        self._undo.note(partition, key, store)
        if value is None:
            store.pop(key, None)
        else:
            store[key] = value

    def savepoint(self) -> None:
        self._undo.start()

    def release(self) -> None:
        self._undo.release()

    def rollback(self) -> None:
        self._undo.undo(self.data)

    def items(self, partition: int, from_key: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Key order, from ``from_key`` on, over a snapshot (as RocksDB iterates)."""
        snapshot = sorted(self.data[partition].items())
        return iter([(k, v) for k, v in snapshot if from_key is None or k >= from_key])

    def keys_with_prefix(self, partition: int, prefix: bytes) -> list[bytes]:
        return sorted(k for k in self.data[partition] if k.startswith(prefix))
