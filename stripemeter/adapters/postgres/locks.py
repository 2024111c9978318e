"""Session advisory locks, tried rather than waited for.

A request that waited for another one's lock held a pool connection all the while; a tenant sending
many at once held the whole pool. ``held`` tries the lock and raises ``Busy`` (409 with Retry-After
in the API) when another session has it; ``wait=True`` waits instead (the CLI: one operator, its own
connection).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg

from stripemeter.domain.errors import Busy

RETRY_AFTER_SECONDS = 2.0


@asynccontextmanager
async def held(
    conn: psycopg.AsyncConnection, name: str, busy: str, *, wait: bool = False
) -> AsyncIterator[None]:
    """Hold the advisory lock ``name`` for the block; ``busy`` is the message when another has it."""
    if wait:
        await conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (name,))
    else:
        cur = await conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (name,))
        row = await cur.fetchone()
        if not (row and row[0]):
            raise Busy(busy, retry_after=RETRY_AFTER_SECONDS)
    try:
        yield
    finally:
        await conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (name,))
