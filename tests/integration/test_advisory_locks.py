"""The advisory-lock helper (adapters/postgres/locks.py) against PostgreSQL: a tried lock another
session holds is ``Busy``, a transaction's lock ends with it, and the migrator's numbered lock is the
one older releases take (``pg_advisory_lock(<number>)``)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest

from stripemeter.adapters.postgres import locks
from stripemeter.adapters.postgres.migrate import LOCK_ID
from stripemeter.domain.config import Settings
from stripemeter.domain.errors import Busy


@pytest.fixture
async def two(stack: Settings) -> AsyncIterator[tuple[psycopg.AsyncConnection, psycopg.AsyncConnection]]:
    url = stack.database_url.value
    async with (
        await psycopg.AsyncConnection.connect(url, autocommit=True) as a,
        await psycopg.AsyncConnection.connect(url, autocommit=True) as b,
    ):
        yield a, b


async def test_a_session_lock_another_session_holds_is_busy_until_released(
    two: tuple[psycopg.AsyncConnection, psycopg.AsyncConnection],
) -> None:
    a, b = two
    name = f"test-lock:{uuid.uuid4().hex}"
    async with locks.held(a, name, "taken"):
        with pytest.raises(Busy, match="taken"):
            async with locks.held(b, name, "taken"):
                pass
        async with locks.held_if_free(b, name) as got:
            assert not got
    async with locks.held_if_free(b, name) as got:
        assert got
        async with locks.held_if_free(a, name) as other:
            assert not other
    async with locks.held(a, name, "taken", wait=True):
        pass


async def test_a_transaction_lock_ends_with_its_transaction(
    two: tuple[psycopg.AsyncConnection, psycopg.AsyncConnection],
) -> None:
    a, b = two
    name = f"test-lock:{uuid.uuid4().hex}"
    async with a.transaction():
        await locks.for_transaction(a, name, "taken")
        with pytest.raises(Busy) as busy:
            async with b.transaction():
                await locks.for_transaction(b, name, "taken", retry_after=1.0)
        assert busy.value.retry_after == 1.0
    async with b.transaction():
        await locks.for_transaction(b, name, "taken", wait=True)


async def test_a_numbered_lock_is_the_one_taken_by_its_number(
    stack: Settings, two: tuple[psycopg.AsyncConnection, psycopg.AsyncConnection]
) -> None:
    a, _ = two
    held = (
        "SELECT classid::bigint << 32 | objid::bigint FROM pg_locks"
        " WHERE locktype = 'advisory' AND objsubid = 1 AND pid = %s AND granted"
    )
    with psycopg.connect(stack.database_url.value, autocommit=True) as sync:
        with locks.held_waiting(sync, LOCK_ID):
            cur = await a.execute(held, (sync.info.backend_pid,))
            assert await cur.fetchall() == [(LOCK_ID,)]  # as older releases take it
        cur = await a.execute(held, (sync.info.backend_pid,))
        assert await cur.fetchall() == []
