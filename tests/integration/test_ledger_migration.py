"""Migration 0023 on a ledger of a million rows in the previous shape (one table): no row lost or
changed (count and checksums by outcome before and after), the old table kept as the first partition
(no copy), and the time it took and the bytes per event, printed (``pytest -s``; docs/benchmarks.md
"Ledger size and retention")."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from stripemeter.adapters.postgres import migrate as migrator
from stripemeter.adapters.postgres.ledger_partitions import upkeep
from stripemeter.domain.config import Settings
from tests.integration.harness import own_schema

ROWS = 1_000_000
DAY_ROWS = 200_000  # of them written again as this release's sink writes them, for their size
PARTITIONED = 23  # the migration under test
COLUMNS = (
    "source_topic, source_partition, source_offset, source_index, outcome, tenant_id, metric, customer_ref,"
    " quantity_micros, ts, idempotency_key, key_derived, resource_id, meta, error_code, error_message, raw,"
    " recorded_at"
)
# per outcome: rows, sums of offsets and quantities, and a sum of a hash of every column of each row
CHECKSUMS = f"""
SELECT outcome, count(*), sum(source_offset), sum(quantity_micros),
       sum(hashtextextended(concat_ws('|', {COLUMNS}), 0)::numeric)
FROM events GROUP BY outcome ORDER BY outcome
"""
SIZE = """
SELECT sum(pg_table_size(c.oid)), sum(pg_indexes_size(c.oid)), sum(c.reltuples)::bigint FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'events'::regclass AND c.relname = ANY(%s)
"""


@pytest.fixture
def schema_url(stack: Settings) -> Iterator[str]:
    with own_schema(stack.database_url.value, "ledger_million") as url:
        yield url


def old_row(i: int, base: datetime) -> str:
    """One ledger row as the sink wrote it, in COPY text: 90 % counted, 5 % duplicate, 4 % too late,
    1 % rejected, over 7 tenants, 3 metrics, 100,000 customers and 35 days."""
    kind = i % 100
    ts = base - timedelta(seconds=i * 3 % (35 * 86_400))
    source = ("usage.events", str(i % 12), str(i), str(i % 4))
    recorded = (ts + timedelta(seconds=2)).isoformat()
    if kind == 99:
        error = ("invalid_json", "not JSON: expected a value", '{"tenantId": "t' + str(i) + '", "qu')
        return "\t".join((*source, "rejected", *["\\N"] * 9, *error, recorded)) + "\n"
    event = (
        "counted" if kind < 90 else "duplicate" if kind < 95 else "late",
        f"tenant-{i % 7}",
        ("requests", "tokens", "gb_hours")[i % 3],
        f"cus_{i * 7919 % 100_000:06d}",
        str((i % 1000 + 1) * 1000),
        ts.isoformat(),
        f"{i:08x}-7d1c-4a2e-9b3f-{i * 2654435761 % 16**12:012x}",
        "t" if i % 2 else "f",
        f"res-{i % 5000}" if i % 3 == 0 else "\\N",
        '{"region": "eu-west-1"}' if i % 10 == 0 else "\\N",
    )
    return "\t".join((*source, *event, "\\N", "\\N", "\\N", recorded)) + "\n"


def load_old_ledger(url: str, base: datetime) -> None:
    with (
        psycopg.connect(url) as conn,
        conn.cursor() as cur,
        cur.copy(f"COPY events ({COLUMNS}) FROM STDIN") as copy,
    ):
        for start in range(0, ROWS, 50_000):
            copy.write("".join(old_row(i, base) for i in range(start, min(ROWS, start + 50_000))))


def bytes_per_row(conn: psycopg.Connection, partitions: list[str]) -> tuple[str, int]:
    """Bytes per row of these partitions, table and indexes (and each), and how many rows."""
    conn.execute("ANALYZE events")
    row = conn.execute(SIZE, (partitions,)).fetchone()
    assert row is not None and row[2]
    table, indexes, rows = (int(v) for v in row)
    return f"{(table + indexes) / rows:.0f} (table {table / rows:.0f}, indexes {indexes / rows:.0f})", rows


@pytest.mark.timeout(900)  # about 2-3 minutes here, most of it loading the rows
async def test_a_million_row_ledger_is_partitioned_without_losing_a_row(
    schema_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = migrator.available()
    monkeypatch.setattr(migrator, "available", lambda: [m for m in shipped if m.version < PARTITIONED])
    migrator.migrate(schema_url)  # the previous release's schema
    base = datetime.now(UTC).replace(microsecond=0)
    started = time.perf_counter()
    load_old_ledger(schema_url, base)
    loaded = time.perf_counter() - started
    with psycopg.connect(schema_url) as conn:
        before = conn.execute(CHECKSUMS).fetchall()
    assert sum(r[1] for r in before) == ROWS

    # this migration alone, whatever later ones ship with it
    monkeypatch.setattr(migrator, "available", lambda: [m for m in shipped if m.version <= PARTITIONED])
    started = time.perf_counter()
    applied = migrator.migrate(schema_url)
    seconds = time.perf_counter() - started
    assert [m.version for m in applied] == [PARTITIONED]

    with psycopg.connect(schema_url, autocommit=True) as conn:
        assert conn.execute(CHECKSUMS).fetchall() == before
        [(placed,)] = conn.execute(
            "SELECT count(*) FROM events WHERE tableoid = 'events_unpartitioned'::regclass"
        ).fetchall()
        assert placed == ROWS  # the old table is the first partition: nothing was copied
        old_bytes, _ = bytes_per_row(conn, ["events_unpartitioned"])
        # the day the migration ran, from the bound it gave the old table (its day + 2): a run that
        # crosses midnight UTC between loading and migrating still lines its days up with the migration's
        [(bound,)] = conn.execute(
            "SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE oid = 'events_unpartitioned'::regclass"
        ).fetchall()
        until = datetime.fromisoformat(bound.split("TO ('")[1].split("')")[0]).astimezone(UTC)
        today = until - timedelta(days=2)

    # the same rows as this release's sink writes them, into day partitions (one key, no old one)
    async with await psycopg.AsyncConnection.connect(schema_url, autocommit=True) as aconn:
        await upkeep(aconn, today, retention_days=45)
    with psycopg.connect(schema_url, autocommit=True) as conn:
        conn.execute(
            f"INSERT INTO events ({COLUMNS}, ledger_time) SELECT 'copy', source_partition, source_offset,"
            " source_index, outcome, tenant_id, metric, customer_ref, quantity_micros, moved,"
            " idempotency_key, key_derived, resource_id, meta, error_code, error_message, raw, recorded_at,"
            " moved"
            " FROM (SELECT *, %s::timestamptz + (source_offset %% 432000) * interval '1 s' AS moved"
            " FROM events_unpartitioned WHERE source_offset < %s) e",
            (today + timedelta(days=2), DAY_ROWS),
        )
        days = [f"events_{(today + timedelta(days=n)):%Y%m%d}" for n in range(2, 8)]
        day_bytes, day_rows = bytes_per_row(conn, days)
    assert day_rows == pytest.approx(DAY_ROWS, rel=0.05)
    print(
        f"\nCOPY of {ROWS:,} rows in the previous shape: {loaded:.1f} s; migration 0023: {seconds:.1f} s;"
        f" bytes per event (table + indexes): {old_bytes} in the old table as the first partition,"
        f" {day_bytes} in day partitions"
    )
