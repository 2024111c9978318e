"""The API's connection pool."""

from __future__ import annotations

from psycopg_pool import AsyncConnectionPool


async def open_pool(database_url: str, max_size: int = 8) -> AsyncConnectionPool:
    pool = AsyncConnectionPool(
        database_url, min_size=1, max_size=max_size, open=False, kwargs={"autocommit": True}
    )
    await pool.open(wait=True, timeout=15)
    return pool
