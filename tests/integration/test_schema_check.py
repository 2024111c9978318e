"""The schema check at start-up, on a real PostgreSQL: the worker and the API refuse a database behind
this release, or ahead of it by a contract migration that does not run with it; newer expand migrations
are accepted. Each test migrates a schema of its own (search_path), not the shared one."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import psycopg
import pytest

from stripemeter.adapters.postgres.migrate import (
    SchemaMismatch,
    applied_migrations,
    available,
    check_schema,
    migrate,
)
from stripemeter.domain.config import Settings, settings_env
from tests.integration.harness import own_schema


@pytest.fixture
def schema_url(stack: Settings) -> Iterator[str]:
    """A database URL whose tables live in a schema of their own, dropped after the test."""
    with own_schema(stack.database_url.value, "upgrade") as url:
        yield url


def start(command: str, stack: Settings, url: str) -> subprocess.CompletedProcess[str]:
    """``stripemeter COMMAND`` against ``url``: it must stop at the check, before it serves anything."""
    env = {**os.environ, **settings_env(stack), "DATABASE_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "stripemeter", command], env=env, capture_output=True, text=True, timeout=60
    )


def test_a_migrated_database_passes_and_records_each_migrations_declaration(schema_url: str) -> None:
    migrate(schema_url)
    check_schema(schema_url)
    with psycopg.connect(schema_url) as conn:
        applied = applied_migrations(conn)
    assert [a.label for a in applied] == [m.label for m in available()]
    assert [a.oldest_code for a in applied] == [m.oldest_code for m in available()]


def test_worker_and_api_refuse_a_database_behind_them(stack: Settings, schema_url: str) -> None:
    migrate(schema_url)
    newest, before = available()[-1], available()[-2]
    with psycopg.connect(schema_url, autocommit=True) as conn:
        conn.execute("DELETE FROM schema_migrations WHERE version = %s", (newest.version,))
    with pytest.raises(SchemaMismatch):
        check_schema(schema_url)
    for command in ("worker", "api"):
        run = start(command, stack, schema_url)
        assert run.returncode == 1, run.stderr
        assert "the database is behind this release" in run.stderr and "Traceback" not in run.stderr
        assert f"needs migration {newest.label}, found {before.label}" in run.stderr


def test_a_newer_expand_migration_is_accepted_a_contract_one_only_if_it_declares_this_release(
    stack: Settings, schema_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    migrate(schema_url)
    newest = available()[-1].version
    insert = "INSERT INTO schema_migrations (version, name, checksum, oldest_code) VALUES (%s, %s, 'x', %s)"
    with psycopg.connect(schema_url, autocommit=True) as conn:
        conn.execute(insert, (newest + 1, "next_expand", None))  # the next release's expand step
        conn.execute(insert, (newest + 2, "next_contract", newest))  # drops what this release no longer uses
    with caplog.at_level("INFO", logger="stripemeter.adapters.postgres.migrate"):
        check_schema(schema_url)
    assert f"{newest + 1:04d}_next_expand, {newest + 2:04d}_next_contract" in caplog.text

    with psycopg.connect(schema_url, autocommit=True) as conn:
        conn.execute(insert, (newest + 3, "drop_what_this_uses", newest + 1))
    run = start("worker", stack, schema_url)
    assert run.returncode == 1, run.stderr
    assert f"ahead of this release: it needs migration {available()[-1].label}" in run.stderr
    assert f"found {newest + 3:04d}_drop_what_this_uses" in run.stderr
    assert f"run a release that ships {newest + 1:04d} or later" in run.stderr
