"""PostgreSQL advisory locks: the one place their SQL is written.

A lock is named by a string (hashed to PostgreSQL's 64-bit key by ``hashtextextended(name, 0)``) or,
for the migrator's lock that older releases take too, by the number itself.

Locks are tried rather than waited for where a request holds a pool connection: a request that waited
for another one's lock held the connection all the while, and a tenant sending many at once held the
whole pool. ``held`` and ``for_transaction`` try the lock and raise ``Busy`` (409 with Retry-After in
the API) when another session has it; ``wait=True`` waits instead (the CLI: one operator, its own
connection). ``held_if_free`` tells the caller whether it got the lock (a schedule that skips a turn).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import psycopg

from stripemeter.domain.errors import Busy

RETRY_AFTER_SECONDS = 2.0

LockKey = str | int


def _sql(function: str, key: LockKey) -> tuple[str, tuple[LockKey]]:
    """``SELECT <function>(<key>)``: a name is hashed, a number is the key itself."""
    arg = "%s::bigint" if isinstance(key, int) else "hashtextextended(%s, 0)"
    return f"SELECT {function}({arg})", (key,)


async def _try(conn: psycopg.AsyncConnection, function: str, key: LockKey) -> bool:
    cur = await conn.execute(*_sql(function, key))
    row = await cur.fetchone()
    return bool(row and row[0])


@asynccontextmanager
async def held_if_free(conn: psycopg.AsyncConnection, key: LockKey) -> AsyncIterator[bool]:
    """Try the session lock ``key``: the block learns whether it got it, and it is released after."""
    got = await _try(conn, "pg_try_advisory_lock", key)
    try:
        yield got
    finally:
        if got:
            await conn.execute(*_sql("pg_advisory_unlock", key))


@asynccontextmanager
async def held(
    conn: psycopg.AsyncConnection,
    key: LockKey,
    busy: str,
    *,
    wait: bool = False,
    retry_after: float = RETRY_AFTER_SECONDS,
) -> AsyncIterator[None]:
    """Hold the session lock ``key`` for the block; ``busy`` is the message when another has it."""
    if wait:
        await conn.execute(*_sql("pg_advisory_lock", key))
    elif not await _try(conn, "pg_try_advisory_lock", key):
        raise Busy(busy, retry_after=retry_after)
    try:
        yield
    finally:
        await conn.execute(*_sql("pg_advisory_unlock", key))


async def for_transaction(
    conn: psycopg.AsyncConnection,
    key: LockKey,
    busy: str,
    *,
    wait: bool = False,
    retry_after: float = RETRY_AFTER_SECONDS,
) -> None:
    """Hold the lock ``key`` until the transaction ends (PostgreSQL releases it at commit or rollback)."""
    if wait:
        await conn.execute(*_sql("pg_advisory_xact_lock", key))
    elif not await _try(conn, "pg_try_advisory_xact_lock", key):
        raise Busy(busy, retry_after=retry_after)


@contextmanager
def held_waiting(conn: psycopg.Connection, key: LockKey) -> Iterator[None]:
    """Hold the session lock ``key`` for the block on a synchronous connection, waiting for it."""
    conn.execute(*_sql("pg_advisory_lock", key))
    try:
        yield
    finally:
        conn.execute(*_sql("pg_advisory_unlock", key))


async def release_all(conn: psycopg.AsyncConnection) -> None:
    """Release every session lock the connection holds (before it goes back to a pool)."""
    await conn.execute("SELECT pg_advisory_unlock_all()")
