"""The API's connection pools.

A request waits at most ``timeout`` seconds for a connection (then ``psycopg_pool.PoolTimeout``, which
the API answers 503 with Retry-After), and no statement runs longer than ``statement_timeout_seconds``
(PostgreSQL cancels it: ``psycopg.errors.QueryCanceled``). Without a wait limit a flood of slow
requests held every connection and every other request, readiness included, queued behind them.
"""

from __future__ import annotations

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from stripemeter.adapters.postgres import locks


def statement_timeout_ms(seconds: float) -> str:
    """PostgreSQL's ``statement_timeout`` value for ``seconds`` (0: none)."""
    return str(round(seconds * 1000))


async def open_pool(
    database_url: str,
    max_size: int = 8,
    timeout: float = 30.0,
    statement_timeout_seconds: float = 0.0,
) -> AsyncConnectionPool:
    setting = statement_timeout_ms(statement_timeout_seconds)

    async def configure(conn: AsyncConnection) -> None:
        await conn.execute("SELECT set_config('statement_timeout', %s, false)", (setting,))

    async def reset(conn: AsyncConnection) -> None:
        # a session advisory lock whose unlock failed or was cancelled must not go back to the pool
        # with the connection: the tried locks would answer busy to that tenant for good
        await locks.release_all(conn)

    pool = AsyncConnectionPool(
        database_url,
        min_size=1,
        max_size=max_size,
        timeout=timeout,
        open=False,
        kwargs={"autocommit": True},
        configure=configure,
        reset=reset,
    )
    await pool.open(wait=True, timeout=15)
    return pool
