"""A worker keeps its RocksDB files only after a clean stop that is recent: older files may hold keys
whose tombstones compaction has removed from the changelogs since (adapters/kafka/changelog_state.py)."""

from __future__ import annotations

import os
from pathlib import Path

from stripemeter.adapters.kafka.changelog_state import (
    CLEAN_MARKER,
    STALE_AFTER_SECONDS,
    mark_clean_stop,
    prepare_table_dir,
)

NOW = 1_800_000_000.0


def stopped(tmp_path: Path, seconds_ago: float | None) -> tuple[Path, Path]:
    """A data dir with table files, stopped cleanly ``seconds_ago`` (None: not cleanly)."""
    tables = tmp_path / "tables"
    (tables / "dedupe-0.db").mkdir(parents=True)
    if seconds_ago is not None:
        mark_clean_stop(tmp_path)
        os.utime(tmp_path / CLEAN_MARKER, (NOW - seconds_ago, NOW - seconds_ago))
    return tables, tmp_path


def test_a_recent_clean_stop_keeps_the_tables(tmp_path: Path) -> None:
    tables, data = stopped(tmp_path, seconds_ago=STALE_AFTER_SECONDS - 60)
    prepare_table_dir(tables, data, now=NOW)
    assert tables.exists() and not (data / CLEAN_MARKER).exists()  # the marker is for one start


def test_a_clean_stop_older_than_the_tombstones_rebuilds_the_tables(tmp_path: Path) -> None:
    tables, data = stopped(tmp_path, seconds_ago=STALE_AFTER_SECONDS + 60)
    prepare_table_dir(tables, data, now=NOW)
    assert not tables.exists() and not (data / CLEAN_MARKER).exists()


def test_a_stop_that_was_not_clean_rebuilds_the_tables(tmp_path: Path) -> None:
    tables, data = stopped(tmp_path, seconds_ago=None)
    prepare_table_dir(tables, data, now=NOW)
    assert not tables.exists()
