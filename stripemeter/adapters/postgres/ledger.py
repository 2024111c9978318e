"""Writing the event ledger, in one transaction per sink batch.

Ledger records (the worker's own JSON arrays, many events per record, after the record format's
version in the current format: ``[2, item, ...]``; see ``schemas/versions.py``) go to PostgreSQL as
they were read: COPY puts each record in a temporary ``jsonb`` row and one INSERT ... SELECT unpacks them. The
sink builds no Python object per event; PostgreSQL parses the JSON, in C. Dead letters (rare, and
JSON objects from anywhere) are turned into rows in Python.

Rows are keyed by their input's source, so a record written twice (redelivered after a crash) adds
nothing. The insert tries without ``ON CONFLICT`` first, in a savepoint: that clause looks every row
up in the primary key before inserting it, which cost about a quarter of PostgreSQL's time per event,
and a conflict only happens after a crash. On a unique violation the batch is inserted again with
``ON CONFLICT DO NOTHING``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import psycopg

from stripemeter.domain import metrics
from stripemeter.schemas import versions

RAW_LIMIT = 64 * 1024

STAGING_COLUMNS = (
    "source_topic",
    "source_partition",
    "source_offset",
    "source_index",
    "outcome",
    "tenant_id",
    "metric",
    "customer_ref",
    "quantity_micros",
    "ts_ms",
    "idempotency_key",
    "key_derived",
    "resource_id",
    "meta",
    "error_code",
    "error_message",
    "raw",
)

# Temporary tables, created once per connection; ON COMMIT DELETE ROWS empties them at every commit.
CREATE_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS events_in (
    source_topic text, source_partition integer, source_offset bigint, source_index integer, outcome text,
    tenant_id text, metric text, customer_ref text, quantity_micros numeric(38, 0), ts_ms bigint,
    idempotency_key text, key_derived boolean, resource_id text, meta jsonb, error_code text,
    error_message text, raw text
) ON COMMIT DELETE ROWS
"""

INSERT_FROM_STAGING = """
INSERT INTO events (source_topic, source_partition, source_offset, source_index, outcome, tenant_id, metric,
                    customer_ref, quantity_micros, ts, idempotency_key, key_derived, resource_id, meta,
                    error_code, error_message, raw)
SELECT source_topic, source_partition, source_offset, source_index, outcome, tenant_id, metric, customer_ref,
       quantity_micros, to_timestamp(ts_ms / 1000.0), idempotency_key, key_derived, resource_id, meta,
       error_code, error_message, raw
FROM events_in
ON CONFLICT DO NOTHING
"""

CREATE_LEDGER_STAGING = "CREATE TEMP TABLE IF NOT EXISTS ledger_in (chunk jsonb) ON COMMIT DELETE ROWS"
# A chunk is hundreds of KiB: kept out of line but not compressed (pglz took ~7 % of PostgreSQL's time
# on a table that lives for one transaction).
UNCOMPRESSED_LEDGER_STAGING = "ALTER TABLE ledger_in ALTER COLUMN chunk SET STORAGE EXTERNAL"

# A ledger item is [outcome, tenant, metric, customer, micros, ts_ms, key, derived, resource, meta,
# source partition, source offset, source index] (see stripemeter/core/metering.py and schemas/records.py);
# the record format's version, the first element of a chunk of the current format, is no item.
INSERT_FROM_LEDGER = """
INSERT INTO events (source_topic, source_partition, source_offset, source_index, outcome, tenant_id, metric,
                    customer_ref, quantity_micros, ts, idempotency_key, key_derived, resource_id, meta)
SELECT %s, (e->>10)::integer, (e->>11)::bigint, (e->>12)::integer, e->>0, e->>1, e->>2, e->>3,
       (e->>4)::numeric, to_timestamp((e->>5)::bigint / 1000.0), e->>6, e->>7 IN ('1', 'true'), e->>8,
       nullif(e->9, 'null'::jsonb)
FROM ledger_in, jsonb_array_elements(chunk) AS e
WHERE jsonb_typeof(e) = 'array'
"""
INSERT_FROM_LEDGER_SKIPPING_WRITTEN = INSERT_FROM_LEDGER + "ON CONFLICT DO NOTHING\n"

UPSERT_WATERMARKS = """
INSERT INTO watermarks (tenant_id, metric, customer_ref, watermark)
SELECT e->>1, e->>2, e->>3, to_timestamp(max((e->>5)::bigint) / 1000.0)
FROM ledger_in, jsonb_array_elements(chunk) AS e
WHERE e->>0 = 'counted'
GROUP BY 1, 2, 3
ON CONFLICT (tenant_id, metric, customer_ref) DO UPDATE
SET watermark = EXCLUDED.watermark, updated_at = now()
WHERE watermarks.watermark < EXCLUDED.watermark
"""

_SPECIAL = re.compile(r"[\\\t\n\r\x00]")
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def copy_field(value: Any) -> str:
    """One value in PostgreSQL's COPY text format."""
    if value is None:
        return "\\N"
    kind = value.__class__
    if kind is str:
        text: str = value
        if _SPECIAL.search(text) is None:  # the common case: nothing to escape
            return text
        return text.replace("\x00", "").translate(_ESCAPES)
    if value is True:
        return "t"
    if value is False:
        return "f"
    if kind is int:
        return str(value)
    if isinstance(value, dict | list):
        value = orjson.dumps(value).decode()
    return str(value).replace("\x00", "").translate(_ESCAPES)


def copy_text(rows: Iterable[Sequence[Any]]) -> bytes:
    return "".join("\t".join(map(copy_field, row)) + "\n" for row in rows).encode()


def rejected_row(dead_letter: dict[str, Any]) -> tuple[Any, ...]:
    """A dead-letter record as a staging row (outcome ``rejected``)."""
    error = dead_letter.get("error") or {}
    raw = dead_letter.get("raw")
    if isinstance(raw, str) and len(raw) > RAW_LIMIT:
        raw = raw[:RAW_LIMIT]
    return (
        dead_letter.get("topic"),
        dead_letter.get("partition"),
        dead_letter.get("offset"),
        dead_letter.get("index") or 0,
        "rejected",
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        error.get("code"),
        error.get("message"),
        raw,
    )


def copy_json_line(raw: bytes) -> bytes:
    """A JSON document as one line of COPY text: backslashes doubled, line breaks and tabs escaped
    (compact JSON has none outside strings, but a record from elsewhere might)."""
    line = raw.replace(b"\\", b"\\\\")
    if b"\n" in line or b"\r" in line or b"\t" in line:
        line = line.replace(b"\n", b"\\n").replace(b"\r", b"\\r").replace(b"\t", b"\\t")
    return line + b"\n"


async def create_staging(conn: psycopg.AsyncConnection) -> None:
    """The connection's temporary tables (a no-op after the first call)."""
    await conn.execute(CREATE_STAGING)
    await conn.execute(CREATE_LEDGER_STAGING)
    await conn.execute(UNCOMPRESSED_LEDGER_STAGING)


async def insert_ledger_rows(conn: psycopg.AsyncConnection, source_topic: str) -> None:
    """The staged chunks' events as ledger rows; rows already written stay as they are."""
    try:
        async with conn.transaction():  # a savepoint: a conflict undoes this statement only
            await conn.execute(INSERT_FROM_LEDGER, (source_topic,))
        return
    except psycopg.errors.UniqueViolation:
        metrics.LEDGER_REWRITES.inc()
    await conn.execute(INSERT_FROM_LEDGER_SKIPPING_WRITTEN, (source_topic,))


async def write_ledger(
    conn: psycopg.AsyncConnection, source_topic: str, chunks: list[bytes], rejected: list[tuple[Any, ...]]
) -> None:
    """Insert ledger records (raw JSON arrays of items) and dead-letter rows, idempotently, and advance
    the watermarks of the counted events. Call inside the batch's transaction. A chunk in a record
    format of a later release raises ``versions.UnknownRecordVersion`` before anything is written: the
    sink stops rather than skip (lose) or misread ledger rows."""
    for chunk in chunks:
        versions.check(versions.array_version(chunk), "a ledger record")
    if chunks:
        async with conn.cursor().copy("COPY ledger_in (chunk) FROM STDIN") as copy:
            await copy.write(b"".join(map(copy_json_line, chunks)))
        await insert_ledger_rows(conn, source_topic)
        await conn.execute(UPSERT_WATERMARKS)
    if rejected:
        async with conn.cursor().copy(f"COPY events_in ({', '.join(STAGING_COLUMNS)}) FROM STDIN") as copy:
            await copy.write(copy_text(rejected))
        await conn.execute(INSERT_FROM_STAGING)
