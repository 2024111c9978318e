"""The API's bounded memory of who asked: API-key rows in bounded LRUs; its token buckets per name
are ``stripemeter.domain.rates.RateLimiter`` (per tenant, and per client for failed attempts).

Kept apart from ``auth`` so the application's typed keys (``appkeys``) can name these types.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any, Generic, TypeVar

from stripemeter.domain import metrics
from stripemeter.domain.rates import RateLimiter

KEY_CACHE_SECONDS = 5.0  # a revoked key stops working within this
KEY_CACHE_SIZE = 10_000  # valid keys remembered (one row each, well under 1 KiB)
MISS_CACHE_SECONDS = 30.0  # a key id that found nothing is not looked up again for this long
MISS_CACHE_SIZE = 10_000  # such ids remembered
KNOWN_SECONDS = 3600.0  # an id found valid this recently is not a guess: its lookups need no token

V = TypeVar("V")


class BoundedCache(Generic[V]):
    """At most ``size`` entries, each for ``ttl`` seconds; the least recently used goes first."""

    def __init__(self, size: int, ttl: float):
        self.size = size
        self.ttl = ttl
        self._entries: OrderedDict[str, tuple[V, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, now: float) -> tuple[V] | None:
        """``(value,)`` while fresh, else None (an expired entry is dropped)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now - entry[1] > self.ttl:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return (entry[0],)

    def put(self, key: str, value: V, now: float) -> None:
        self._entries[key] = (value, now)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def discard(self, key: str) -> None:
        self._entries.pop(key, None)


class KeyCache:
    """Key id -> its row: valid keys and ids that found nothing, in separate bounded caches."""

    def __init__(
        self,
        size: int = KEY_CACHE_SIZE,
        miss_size: int = MISS_CACHE_SIZE,
        ttl: float = KEY_CACHE_SECONDS,
        miss_ttl: float = MISS_CACHE_SECONDS,
    ):
        self.found: BoundedCache[dict[str, Any]] = BoundedCache(size, ttl)
        self.missing: BoundedCache[bool] = BoundedCache(miss_size, miss_ttl)
        self.known: BoundedCache[bool] = BoundedCache(size, KNOWN_SECONDS)  # ids found valid lately
        self.inflight: dict[str, asyncio.Future[dict[str, Any] | None]] = {}

    def get(self, key_id: str, now: float) -> tuple[dict[str, Any] | None] | None:
        """``(row,)`` or ``(None,)`` when known, None when PostgreSQL must be asked."""
        hit = self.found.get(key_id, now)
        if hit is not None:
            return hit
        return (None,) if self.missing.get(key_id, now) is not None else None

    def put(self, key_id: str, row: dict[str, Any] | None, now: float) -> None:
        if row is None:
            self.found.discard(key_id)
            self.known.discard(key_id)
            self.missing.put(key_id, True, now)
        else:
            self.missing.discard(key_id)
            self.found.put(key_id, row, now)
            self.known.put(key_id, True, now)
        metrics.API_KEY_CACHE_ENTRIES.labels("found").set(len(self.found))
        metrics.API_KEY_CACHE_ENTRIES.labels("missing").set(len(self.missing))


def failure_limiter(per_minute: float) -> RateLimiter:
    """Failed API-key attempts per client: ``per_minute`` at once, then refilled over a minute."""
    return RateLimiter(per_minute / 60.0, burst=per_minute)
