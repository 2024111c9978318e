"""A Faust table that hands back the changelog writes it makes, so we can wait for them."""

from __future__ import annotations

import asyncio
from typing import Any

import faust


class TrackedTable(faust.Table):
    """Like faust.Table, but every changelog write's future is kept until ``take_unflushed``.

    Faust commits offsets after a best-effort flush of its producer buffer; we acknowledge a message
    only once the changelog writes it caused are on the broker, so a kill -9 can never leave a
    committed offset whose state change was lost.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unflushed: list[asyncio.Future[Any]] = []

    def on_key_set(self, key: Any, value: Any) -> None:
        fut = self.send_changelog(self.partition_for_key(key), key, value)
        self._unflushed.append(fut)
        partition = fut.message.partition
        assert partition is not None
        self._maybe_set_key_ttl(key, partition)
        self._sensor_on_set(self, key, value)

    def on_key_del(self, key: Any) -> None:
        fut = self.send_changelog(self.partition_for_key(key), key, value=None, value_serializer="raw")
        self._unflushed.append(fut)
        partition = fut.message.partition
        assert partition is not None
        self._maybe_del_key_ttl(key, partition)
        self._sensor_on_del(self, key)

    def take_unflushed(self) -> list[asyncio.Future[Any]]:
        taken, self._unflushed = self._unflushed, []
        return taken
