"""Savepoints for key-value state: what the writes since a savepoint replaced, so they can be undone.

A message whose handling fails halfway must leave no trace in the counters; both state stores
(``state.ChangelogState`` and ``memory_state.MemoryState``) note each key's value before its first
write after a savepoint, and put those values back on rollback."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

_ABSENT = object()  # the key held nothing before the savepoint


class UndoLog:
    def __init__(self) -> None:
        self._before: dict[tuple[int, bytes], Any] | None = None

    def start(self) -> None:
        self._before = {}

    def note(self, partition: int, key: bytes, store: Mapping[bytes, Any]) -> None:
        """Called before writing ``key`` into ``store``: remember its value if this is its first write."""
        if self._before is not None and (partition, key) not in self._before:
            self._before[partition, key] = store.get(key, _ABSENT)

    def release(self) -> None:
        """Keep the writes since the savepoint."""
        self._before = None

    def undo(self, stores: Mapping[int, MutableMapping[bytes, Any]]) -> None:
        """Put back what the writes since the savepoint replaced, in each partition's store."""
        for (partition, key), before in (self._before or {}).items():
            if before is _ABSENT:
                stores[partition].pop(key, None)
            else:
                stores[partition][key] = before
        self._before = None
