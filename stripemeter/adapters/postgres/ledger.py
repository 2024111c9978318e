"""Writing the event ledger, in one transaction per sink batch.

Ledger records (the worker's own JSON arrays, many events per record, after the record format's
version in the current format: ``[2, item, ...]``; see ``stripemeter/schemas/versions.py`` and
``stripemeter/schemas/ledger_items.py``) go to PostgreSQL as they were read: COPY puts each record in a
temporary ``jsonb`` row and one INSERT ... SELECT unpacks them, by a column list generated from the
ledger item's definition. The sink builds no Python object per event; PostgreSQL parses the JSON,
in C. Dead letters (rare, and JSON objects from anywhere) are turned into rows in Python.

Rows are keyed by their input's source and their ledger time (the partition key: the event's time,
or a dead letter's record time; see ``ledger_partitions.py``), so a record written twice (redelivered
after a crash) adds nothing. The insert tries without ``ON CONFLICT`` first, in a savepoint: that
clause looks every row up in the key before inserting it, which cost about a quarter of PostgreSQL's
time per event, and a conflict only happens after a crash. On a unique violation the batch is
inserted again with ``ON CONFLICT DO NOTHING``. Rows go in in key order, as every upsert here does:
two sinks writing the same records (the old and the new owner during a rebalance) then wait for each
other instead of deadlocking.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import psycopg

from stripemeter.domain import metrics
from stripemeter.schemas import versions
from stripemeter.schemas.ledger_items import WIRE_FIELDS, position

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
    "ledger_ms",
)

# Temporary tables, created once per connection; ON COMMIT DELETE ROWS empties them at every commit.
CREATE_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS events_in (
    source_topic text, source_partition integer, source_offset bigint, source_index integer, outcome text,
    tenant_id text, metric text, customer_ref text, quantity_micros numeric(38, 0), ts_ms bigint,
    idempotency_key text, key_derived boolean, resource_id text, meta jsonb, error_code text,
    error_message text, raw text, ledger_ms bigint
) ON COMMIT DELETE ROWS
"""

INSERT_FROM_STAGING = """
INSERT INTO events (source_topic, source_partition, source_offset, source_index, outcome, tenant_id, metric,
                    customer_ref, quantity_micros, ts, idempotency_key, key_derived, resource_id, meta,
                    error_code, error_message, raw, ledger_time)
SELECT source_topic, source_partition, source_offset, source_index, outcome, tenant_id, metric, customer_ref,
       quantity_micros, to_timestamp(ts_ms / 1000.0), idempotency_key, key_derived, resource_id, meta,
       error_code, error_message, raw, to_timestamp(ledger_ms / 1000.0)
FROM events_in
ORDER BY source_topic, source_partition, source_offset, source_index
ON CONFLICT DO NOTHING
"""

CREATE_LEDGER_STAGING = "CREATE TEMP TABLE IF NOT EXISTS ledger_in (chunk jsonb) ON COMMIT DELETE ROWS"
# A chunk is hundreds of KiB: kept out of line but not compressed (pglz took ~7 % of PostgreSQL's time
# on a table that lives for one transaction).
UNCOMPRESSED_LEDGER_STAGING = "ALTER TABLE ledger_in ALTER COLUMN chunk SET STORAGE EXTERNAL"

# How each field of a ledger item (schemas/ledger_items.py) is read from its JSON array element: as text,
# cast to a type, as a flag (0/1, or true/false from an older writer) or as JSON (null: SQL NULL).
LEDGER_FIELD_TYPES = {
    "outcome": "text",
    "tenant_id": "text",
    "metric": "text",
    "customer_ref": "text",
    "quantity_micros": "numeric",
    "ts_ms": "bigint",
    "idempotency_key": "text",
    "key_derived": "flag",
    "resource_id": "text",
    "meta": "jsonb",
    "source_partition": "integer",
    "source_offset": "bigint",
    "source_index": "integer",
}


def json_array_field(element: str, position: int, sql_type: str) -> str:
    """The SQL expression reading position ``position`` of the JSON array ``element`` as ``sql_type``."""
    if sql_type == "text":
        return f"{element}->>{position}"
    if sql_type == "flag":
        return f"{element}->>{position} IN ('1', 'true')"
    if sql_type == "jsonb":
        return f"nullif({element}->{position}, 'null'::jsonb)"
    return f"({element}->>{position})::{sql_type}"


def ledger_item_columns(element: str) -> str:
    """``e->>N AS name, ...``: every field of a ledger item by its name, generated from its
    definition (``schemas.ledger_items.WIRE_FIELDS``), so that the SQL follows the wire array's order."""
    return ",\n       ".join(
        f"{json_array_field(element, position(name), LEDGER_FIELD_TYPES[name])} AS {name}"
        for name in WIRE_FIELDS
    )


# The staged chunks' elements, one row each with the ledger item's fields as named columns.
LEDGER_ITEMS = f"""SELECT {ledger_item_columns("e")}
FROM ledger_in, jsonb_array_elements(chunk) AS e"""

# The record format's version, the first element of a chunk of the current format, is no item.
INSERT_FROM_LEDGER = f"""
INSERT INTO events (source_topic, source_partition, source_offset, source_index, outcome, tenant_id, metric,
                    customer_ref, quantity_micros, ts, idempotency_key, key_derived, resource_id, meta,
                    ledger_time)
SELECT %s, source_partition, source_offset, source_index, outcome, tenant_id, metric, customer_ref,
       quantity_micros, to_timestamp(ts_ms / 1000.0), idempotency_key, key_derived, resource_id, meta,
       to_timestamp(ts_ms / 1000.0)
FROM ({LEDGER_ITEMS}
WHERE jsonb_typeof(e) = 'array') AS item
ORDER BY source_partition, source_offset, source_index
"""
INSERT_FROM_LEDGER_SKIPPING_WRITTEN = INSERT_FROM_LEDGER + "ON CONFLICT DO NOTHING\n"

UPSERT_WATERMARKS = f"""
INSERT INTO watermarks (tenant_id, metric, customer_ref, watermark)
SELECT tenant_id, metric, customer_ref, to_timestamp(max(ts_ms) / 1000.0)
FROM ({LEDGER_ITEMS}) AS item
WHERE outcome = 'counted'
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
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


def rejected_row(dead_letter: dict[str, Any], record_ms: int) -> tuple[Any, ...]:
    """A dead-letter record as a staging row (outcome ``rejected``). A rejected input has no event
    time: its row's ledger time (the partition key) is the dead-letter record's timestamp
    ``record_ms``, the same every time that record is read."""
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
        record_ms,
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
