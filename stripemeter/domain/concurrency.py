"""How many heavy requests (replays, reconciliation runs, adjustments) run at once: per tenant and in
all. Tried, never waited for: a request over a cap is refused at once, so a tenant that floods them
holds at most its share of the database pool, and never more than ``total`` of it."""

from __future__ import annotations

from collections import Counter
from typing import Literal

Full = Literal["tenant", "total"]


class ConcurrencyLimit:
    def __init__(self, per_tenant: int, total: int):
        self.per_tenant = per_tenant
        self.total = total
        self._running: Counter[str] = Counter()

    def running(self, tenant: str | None = None) -> int:
        return self._running[tenant] if tenant is not None else self._running.total()

    def try_enter(self, tenant: str) -> Full | None:
        """Count one more for ``tenant``; or say which cap is full (and count nothing)."""
        if self._running[tenant] >= self.per_tenant:
            return "tenant"
        if self._running.total() >= self.total:
            return "total"
        self._running[tenant] += 1
        return None

    def leave(self, tenant: str) -> None:
        self._running[tenant] -= 1
        if self._running[tenant] <= 0:
            del self._running[tenant]
