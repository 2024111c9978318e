"""The PostgreSQL sink's offsets, kept in the database they describe (``sink_offsets``).

Each sink batch stores, in the transaction that writes its rows, the offset of the next record of every
partition it read: every row of a record below that offset is in this database. A restore to an earlier
point restores the offsets with the rows, so the sink goes back exactly as far as the restore did.
Offsets only move forward here: a sink that lost its partition in a rebalance and
finishes a batch late moves nothing back. Only ``set_offsets`` (an operator's rewind) moves them back.
"""

from __future__ import annotations

from collections.abc import Mapping

import psycopg

Offsets = Mapping[tuple[str, int], int]  # (topic, partition) -> offset of the next record

# every write stores a batch of (topic, partition, next_offset) rows; they differ in what a stored row does
_UPSERT = """
INSERT INTO sink_offsets AS s (group_id, topic, partition, next_offset)
SELECT %s, t.topic, t.partition, t.next_offset
FROM unnest(%s::text[], %s::integer[], %s::bigint[]) AS t (topic, partition, next_offset)
ON CONFLICT (group_id, topic, partition)
"""
_MOVE = "DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()"
SAVE = f"{_UPSERT} {_MOVE} WHERE s.next_offset < EXCLUDED.next_offset"  # forward only
ADOPT = f"{_UPSERT} DO NOTHING"  # only where none is stored
SET = f"{_UPSERT} {_MOVE}"  # an operator's rewind: anywhere

LOAD = """
SELECT topic, partition, next_offset FROM sink_offsets
WHERE group_id = %s AND topic = ANY(%s::text[])
"""


def _columns(offsets: Offsets) -> tuple[list[str], list[int], list[int]]:
    keys = sorted(offsets)  # one order for every writer: no deadlock between two sinks' upserts
    return [t for t, _ in keys], [p for _, p in keys], [offsets[k] for k in keys]


async def save(conn: psycopg.AsyncConnection, group_id: str, offsets: Offsets) -> None:
    """Advance the stored offsets to ``offsets`` (never back). Call inside the batch's transaction."""
    if offsets:
        await conn.execute(SAVE, (group_id, *_columns(offsets)))


async def adopt(conn: psycopg.AsyncConnection, group_id: str, offsets: Offsets) -> None:
    """Store ``offsets`` for the partitions that have none yet (the others keep theirs)."""
    if offsets:
        await conn.execute(ADOPT, (group_id, *_columns(offsets)))


async def set_offsets(conn: psycopg.AsyncConnection, group_id: str, offsets: Offsets) -> None:
    """Store exactly ``offsets``, back or forward (an operator's rewind; the sink must be stopped)."""
    if offsets:
        await conn.execute(SET, (group_id, *_columns(offsets)))


async def load(conn: psycopg.AsyncConnection, group_id: str, topics: list[str]) -> dict[tuple[str, int], int]:
    """The stored offsets of ``group_id`` in ``topics``."""
    cur = await conn.execute(LOAD, (group_id, topics))
    return {(topic, partition): offset for topic, partition, offset in await cur.fetchall()}
