"""Versioned SQL migrations from ``schemas/migrations/NNNN_name.sql``, each applied once, in order."""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources

import psycopg

from stripemeter.domain.errors import Permanent

log = logging.getLogger(__name__)

MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
LOCK_ID = 0x5717E  # pg_advisory_lock key: one migrator at a time


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(Permanent, RuntimeError):
    """The migrations cannot be applied as they are (two share a version, one changed after it was
    applied): running again changes nothing."""


def available() -> list[Migration]:
    folder = resources.files("stripemeter.schemas").joinpath("migrations")
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


def migrate(database_url: str) -> list[Migration]:
    """Apply every pending migration; returns those applied now. Safe to run concurrently."""
    applied_now: list[Migration] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_ID,))
        try:
            conn.execute(CREATE_TABLE)
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
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                        (migration.version, migration.name, migration.checksum),
                    )
                log.info("applied migration %04d_%s", migration.version, migration.name)
                applied_now.append(migration)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_ID,))
    return applied_now


def _log_notice(notice: psycopg.errors.Diagnostic) -> None:
    """A migration says what it changed in a row it rewrote (RAISE NOTICE): the operator sees it."""
    log.warning("migration: %s", notice.message_primary)
