"""API keys in PostgreSQL (table ``api_keys``): salted hashes, scopes, revocation."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from stripemeter.domain.auth import NewKey


async def create(
    conn: psycopg.AsyncConnection, key: NewKey, tenant: str, scopes: list[str], description: str | None
) -> None:
    await conn.execute(
        "INSERT INTO api_keys (key_id, tenant_id, scopes, salt, hash, description)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (key.key_id, tenant, scopes, key.salt, key.hash, description),
    )


async def find(conn: psycopg.AsyncConnection, key_id: str) -> dict[str, Any] | None:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute("SELECT * FROM api_keys WHERE key_id = %s AND revoked_at IS NULL", (key_id,))
    return await cur.fetchone()


async def touch(conn: psycopg.AsyncConnection, key_id: str) -> None:
    await conn.execute(
        "UPDATE api_keys SET last_used_at = now() WHERE key_id = %s"
        " AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
        (key_id,),
    )


async def revoke(conn: psycopg.AsyncConnection, key_id: str) -> bool:
    cur = await conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE key_id = %s AND revoked_at IS NULL", (key_id,)
    )
    return cur.rowcount == 1


async def list_keys(conn: psycopg.AsyncConnection, tenant: str | None) -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "SELECT key_id, tenant_id, scopes, description, created_at, revoked_at, last_used_at FROM api_keys"
        " WHERE %s::text IS NULL OR tenant_id = %s ORDER BY created_at",
        (tenant, tenant),
    )
    return await cur.fetchall()
