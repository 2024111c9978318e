"""Versioned SQL migrations from ``schemas/migrations/NNNN_name.sql``, each applied once, in order, and
the schema check every process that uses PostgreSQL makes at start-up.

A migration is *expand* (it only adds: every older release runs on the schema after it) unless it
declares the oldest release that still runs after it, as the newest migration that release ships:
``-- oldest-code: NNNN`` in its text (a *contract* migration, which drops or changes what an older
release uses). The migrator records the declaration in ``schema_migrations.oldest_code``, so a release
that does not ship the migration can still judge it. At start-up (``check_schema``) a process refuses
to run when a migration it ships is not applied (the database is behind), or when a migration it does
not know is applied and declares an oldest release newer than this one (docs/upgrades.md).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg

from stripemeter.adapters.postgres import locks
from stripemeter.domain.errors import Permanent

log = logging.getLogger(__name__)

MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
OLDEST_CODE = re.compile(r"^-- oldest-code: (\d{4})\s*$", re.MULTILINE)
LOCK_ID = 0x5717E  # the advisory lock's key (a number: older releases take it too): one migrator at a time


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def oldest_code(self) -> int | None:
        """The oldest release (its newest migration) that runs on the schema after this migration;
        None for an expand migration (every release does)."""
        match = OLDEST_CODE.search(self.sql)
        return int(match.group(1)) if match else None

    @property
    def label(self) -> str:
        return label(self.version, self.name)


def label(version: int, name: str) -> str:
    """A migration as its file names it: ``0021_invoices``."""
    return f"{version:04d}_{name}"


class MigrationError(Permanent, RuntimeError):
    """The migrations cannot be applied as they are (two share a version, one changed after it was
    applied): running again changes nothing."""


class SchemaMismatch(MigrationError):
    """The database's schema is not one this release runs on: behind it (migrations to apply), or
    ahead of it by a migration that removed what this release uses."""


@dataclass(frozen=True)
class Applied:
    """A row of ``schema_migrations``."""

    version: int
    name: str
    oldest_code: int | None = None

    @property
    def label(self) -> str:
        return label(self.version, self.name)


def available() -> list[Migration]:
    folder = resources.files("stripemeter.schemas.contract").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations share a version: {versions}")
    return found


CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""
# the oldest release a migration declares it runs with (NULL: expand, every release does)
ADD_OLDEST_CODE = "ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS oldest_code integer"


def migrate(database_url: str) -> list[Migration]:
    """Apply every pending migration; returns those applied now. Safe to run concurrently."""
    applied_now: list[Migration] = []
    with psycopg.connect(database_url, autocommit=True) as conn, locks.held_waiting(conn, LOCK_ID):
        conn.execute(CREATE_TABLE)
        conn.execute(ADD_OLDEST_CODE)
        done = {row[0]: row[1] for row in conn.execute("SELECT version, checksum FROM schema_migrations")}
        for migration in available():
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name} changed after it"
                        " was applied; add a new migration instead"
                    )
                continue
            with conn.transaction():
                conn.add_notice_handler(_log_notice)
                try:
                    conn.execute(migration.sql)
                finally:
                    conn.remove_notice_handler(_log_notice)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum, oldest_code)"
                    " VALUES (%s, %s, %s, %s)",
                    (migration.version, migration.name, migration.checksum, migration.oldest_code),
                )
            log.info("applied migration %04d_%s", migration.version, migration.name)
            applied_now.append(migration)
    return applied_now


def _log_notice(notice: psycopg.errors.Diagnostic) -> None:
    """A migration says what it changed in a row it rewrote (RAISE NOTICE): the operator sees it."""
    log.warning("migration: %s", notice.message_primary)


def schema_verdict(shipped: list[Migration], applied: list[Applied]) -> tuple[str | None, list[Applied]]:
    """Whether this release (its ``shipped`` migrations) runs on a database with these ``applied``
    ones: (why not, or None; the applied migrations it does not know, all expand or declaring it
    compatible)."""
    done = {a.version for a in applied}
    found = max(applied, key=lambda a: a.version).label if applied else "none"
    missing = [m for m in shipped if m.version not in done]
    if missing:
        return (
            f"the database is behind this release: it needs migration {shipped[-1].label}, found"
            f" {found} ({len(missing)} to apply, the first {missing[0].label}); run `stripemeter db"
            " migrate` (this release's) before starting it",
            [],
        )
    known = {m.version for m in shipped}
    newest = shipped[-1].version if shipped else 0
    ahead = [a for a in applied if a.version not in known]
    for a in ahead:
        if a.oldest_code is not None and a.oldest_code > newest:
            return (
                f"the database is ahead of this release: it needs migration {shipped[-1].label}, found"
                f" {a.label}, which removes or changes what releases before migration"
                f" {a.oldest_code:04d} use; run a release that ships {a.oldest_code:04d} or later",
                ahead,
            )
    return None, ahead


def applied_migrations(conn: psycopg.Connection[Any]) -> list[Applied]:
    """The rows of ``schema_migrations`` (none if it does not exist), ``oldest_code`` where recorded."""
    if conn.execute("SELECT to_regclass('schema_migrations')").fetchone() == (None,):
        return []
    rows = conn.execute("SELECT to_jsonb(m) FROM schema_migrations m ORDER BY version").fetchall()
    return [Applied(int(r["version"]), str(r["name"]), r.get("oldest_code")) for (r,) in rows]


def check_schema(database_url: str, connect_timeout: float = 10.0) -> None:
    """Refuse (``SchemaMismatch``) to start on a database this release does not run on. A database that
    cannot be reached is not judged (a warning): the process starts, and its own connections wait for
    PostgreSQL as they always do."""
    try:
        with psycopg.connect(database_url, autocommit=True, connect_timeout=int(connect_timeout)) as conn:
            applied = applied_migrations(conn)
    except psycopg.OperationalError as exc:
        log.warning("the database schema was not checked: PostgreSQL did not answer (%s)", exc)
        return
    shipped = available()
    why, ahead = schema_verdict(shipped, applied)
    if why is not None:
        raise SchemaMismatch(why)
    if ahead:
        log.info(
            "the database has migrations this release does not ship, each compatible with it: %s",
            ", ".join(a.label for a in ahead),
        )
