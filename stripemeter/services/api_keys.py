"""``stripemeter keys create|list|revoke``: API keys for the HTTP API (shown once, stored hashed)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import psycopg

from stripemeter.adapters.postgres import api_keys
from stripemeter.domain.auth import ALL_TENANTS, OPERATOR, new_key, parse_scopes
from stripemeter.domain.config import Settings
from stripemeter.schemas.events import TENANT_RE

PRIVATE_MODE = 0o600  # key files: read and written by their owner only
Say = Callable[[str], None]
Table = Callable[[Sequence[str], Sequence[Sequence[object]]], None]


async def create(settings: Settings, tenant: str, scopes_raw: str, description: str | None) -> str:
    if tenant != ALL_TENANTS and not TENANT_RE.fullmatch(tenant):
        raise ValueError(f"--tenant must match {TENANT_RE.pattern} (or be '*' for every tenant)")
    scopes = parse_scopes(scopes_raw, tenant)
    key = new_key()
    async with await psycopg.AsyncConnection.connect(settings.database_url.value, autocommit=True) as conn:
        await api_keys.create(conn, key, tenant, scopes, description)
    return key.token


async def revoke(settings: Settings, key_id: str) -> bool:
    async with await psycopg.AsyncConnection.connect(settings.database_url.value, autocommit=True) as conn:
        return await api_keys.revoke(conn, key_id)


async def list_rows(settings: Settings, tenant: str | None) -> list[list[object]]:
    async with await psycopg.AsyncConnection.connect(settings.database_url.value, autocommit=True) as conn:
        rows = await api_keys.list_keys(conn, tenant)
    return [
        [r["key_id"], r["tenant_id"], ",".join(r["scopes"]), "revoked" if r["revoked_at"] else "active",
         r["created_at"].strftime("%Y-%m-%d %H:%M"), r["last_used_at"].strftime("%Y-%m-%d %H:%M")
         if r["last_used_at"] else "-", r["description"] or ""]
        for r in rows
    ]  # fmt: skip


def local_key_file(settings: Settings) -> Path:
    return settings.state_dir / "api-key"


def ensure_local_key(settings: Settings) -> tuple[Path, bool]:
    """The local stack's key (every tenant, admin and operator) in a file only its owner reads;
    (path, created). A key without the operator scope (made before it existed) is replaced.

    The file is made owner-only at every start, not only when written: a copy, an editor or a
    restore may have left it readable by others."""
    path = local_key_file(settings)
    if path.exists():
        path.chmod(PRIVATE_MODE)
        token = path.read_text().strip()
        key_id = token.split("_")[1] if token.count("_") >= 2 else ""
        scopes = asyncio.run(_active_scopes(settings, key_id))
        if OPERATOR in scopes:
            return path, False
        if scopes:  # an older key of the stack, replaced: nothing holds it any more
            asyncio.run(revoke(settings, key_id))
    token = asyncio.run(create(settings, ALL_TENANTS, f"admin,{OPERATOR}", "local stack"))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_MODE)
    os.fchmod(fd, PRIVATE_MODE)  # the mode of os.open holds only for a file it creates
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return path, True


async def _active_scopes(settings: Settings, key_id: str) -> list[str]:
    async with await psycopg.AsyncConnection.connect(settings.database_url.value, autocommit=True) as conn:
        row = await api_keys.find(conn, key_id)
    return [] if row is None else list(row["scopes"])
