"""Writing the event ledger: rows built as pure COPY text, loaded in one round trip per batch."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import psycopg

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

UPSERT_WATERMARKS = """
INSERT INTO watermarks (tenant_id, metric, customer_ref, watermark)
SELECT t, m, c, to_timestamp(w / 1000.0)
FROM unnest(%s::text[], %s::text[], %s::text[], %s::bigint[]) AS x(t, m, c, w)
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
        if _SPECIAL.search(value) is None:  # the common case: nothing to escape
            return value  # type: ignore[no-any-return]
        return value.replace("\x00", "").translate(_ESCAPES)  # type: ignore[no-any-return]
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


def ledger_row(source_topic: str, item: list[Any]) -> tuple[Any, ...]:
    """A ledger record ``[outcome, *keyed item]`` as a staging row."""
    outcome, tenant, metric, customer, micros, ts_ms, key, derived, resource, meta, part, offset, index = item
    return (
        source_topic,
        part,
        offset,
        index,
        outcome,
        tenant,
        metric,
        customer,
        micros,
        ts_ms,
        key,
        bool(derived),
        resource,
        meta,
        None,
        None,
        None,
    )


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


def watermarks_of(items: Iterable[list[Any]]) -> dict[tuple[str, str, str], int]:
    newest: dict[tuple[str, str, str], int] = {}
    for item in items:
        if item[0] != "counted":
            continue
        stream = (item[1], item[2], item[3])
        if newest.get(stream, -1) < item[5]:
            newest[stream] = item[5]
    return newest


async def write_ledger(
    conn: psycopg.AsyncConnection, rows: list[tuple[Any, ...]], watermarks: dict[tuple[str, str, str], int]
) -> None:
    """Insert the rows (idempotently) and advance watermarks, in one transaction."""
    if not rows and not watermarks:
        return
    async with conn.transaction():
        if rows:
            await conn.execute(CREATE_STAGING)
            async with conn.cursor().copy(
                f"COPY events_in ({', '.join(STAGING_COLUMNS)}) FROM STDIN"
            ) as copy:
                await copy.write(copy_text(rows))
            await conn.execute(INSERT_FROM_STAGING)
        if watermarks:
            keys = list(watermarks)
            await conn.execute(
                UPSERT_WATERMARKS,
                (
                    [k[0] for k in keys],
                    [k[1] for k in keys],
                    [k[2] for k in keys],
                    [watermarks[k] for k in keys],
                ),
            )
