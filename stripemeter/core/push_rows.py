"""The push rows as the Stripe writer sees them: what its round reads and every change it makes to a
counter hour's row, as one object (``PushRows``). PostgreSQL keeps them
(adapters/postgres/push_rows.py); the writer's unit tests log the changes instead.

Every change is a compare-and-set: it names the row version the writer read (or the identifier of the
pending request it acts on) and the lease it holds on the row's usage.deltas partition (``Fence``),
and changes nothing when either moved on. So a writer that lost the partition, or read a row another
writer or a new delta changed since, cannot overwrite it; it reads again on its next round. Each
change returns whether it changed the row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from stripemeter.core.push_plan import Request, Row


@dataclass(frozen=True)
class Fence:
    """Who may change a row: the app's writer holding the row's partition under this epoch."""

    app_id: str
    epoch: int
    partition: int


@dataclass(frozen=True)
class Stream:
    """The hours of one counter stream in one billing period, with the mappings that tie it to Stripe."""

    rows: list[Row]
    event_name: str | None
    aggregation: str
    stripe_customer: str | None
    billing_anchor: datetime | None = None


@dataclass(frozen=True)
class Delivery:
    """Stripe has the pending request ``identifier``: the hour holds ``to_units`` (a ``last`` request),
    or for a sum or count request what it holds plus ``added``, the request's value. ``synced``: that
    is the hour's target, so nothing is left to send for it."""

    identifier: str
    to_units: int
    synced: bool
    added: int | None = None


@dataclass(frozen=True)
class Failure:
    """What went wrong with the pending request ``identifier``, as an operator reads it (``reason``)."""

    identifier: str
    reason: str


class PushRows(Protocol):
    """The writer's reads and changes of push rows. A change made under a fence the writer no longer
    holds, or from a row version that moved on, changes nothing and answers False."""

    async def due(
        self, app_id: str, partitions: list[int], now: datetime, streams: int = 200
    ) -> list[Stream]:
        """Streams of the app's given partitions with something to do, all hours of each period."""
        ...

    async def parked_count(self) -> int:
        """How many counter hours wait for an operator."""
        ...

    async def record_pending(self, row: Row, request: Request, fence: Fence, now: datetime) -> bool:
        """Record the exact request before it is sent (and log it); only from the version read."""
        ...

    async def mark_delivered(self, row: Row, delivery: Delivery, fence: Fence, now: datetime) -> bool:
        """Stripe has the pending request: the hour holds what ``delivery`` says."""
        ...

    async def mark_attempt(
        self, row: Row, failure: Failure, fence: Fence, now: datetime, *, new_key: bool, refused: bool = False
    ) -> bool:
        """The pending request failed for now: retried later, under a new idempotency key if ``new_key``.
        ``refused``: Stripe refused it for now; the first such refusal is remembered."""
        ...

    async def refuse_pending(self, row: Row, failure: Failure, fence: Fence, now: datetime) -> bool:
        """Stripe refused the pending request (it did not land): park the counter and forget the
        request, so that once the cause is fixed a new request is planned from the fixed mapping."""
        ...

    async def forget_pending(self, row: Row, failure: Failure, fence: Fence, now: datetime) -> bool:
        """Stripe's summaries show the pending request never landed: plan a new one (new identifier)."""
        ...

    async def park(self, row: Row, reason: str, fence: Fence, now: datetime, status: str = "parked") -> bool:
        """Park the row (or mark it ``unmapped``) as read; a pending request stays recorded."""
        ...

    async def mark_synced(self, row: Row, fence: Fence, now: datetime) -> bool:
        """Stripe holds the hour's target and nothing is pending: done until the next change."""
        ...
