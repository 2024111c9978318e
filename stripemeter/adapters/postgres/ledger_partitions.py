"""The ledger's partitions: one a day by ``ledger_time`` (the event's time; see migration 0023 and
docs/decisions.md), created ahead and dropped past retention.

Retention never deletes rows: a day whose whole range is older than the retention's start (the start
of the day the retention's length before now) is detached and dropped, and the default partition
``events_outside`` (rows whose day has no partition: an event already past retention when it arrives)
is truncated once nothing in it is inside retention. A day created after rows of it reached the
default partition (the upkeep did not run for a while, or retention was made longer) takes those
rows over before it is attached.

One process does the upkeep at a time (an advisory lock; the others skip their turn). Each change is
its own short transaction with a lock timeout, so the sink's writes and the API's reads wait for at
most that long; a change that times out is tried again at the next upkeep.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

import psycopg

from stripemeter.adapters.postgres import locks
from stripemeter.domain import metrics

log = logging.getLogger(__name__)

LOCK = "stripemeter ledger partitions"
DEFAULT_PARTITION = "events_outside"
AHEAD_DAYS = 7  # days created ahead of today: a week without upkeep still writes into day partitions
LOCK_TIMEOUT = "5s"  # a change waits this long for the ledger's lock, then waits for the next upkeep
BOUNDS = re.compile(r"FOR VALUES FROM \((.+?)\) TO \((.+?)\)")

# The ledger time of the rows from before partitioning and of those the previous release's sink writes
# (it names no ledger_time): the first partition holds them (migration 0023).
UNPLACED = "1970-01-01 00:00:00+00"

PARTITIONS = """
SELECT c.relname, pg_get_expr(c.relpartbound, c.oid)
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'events'::regclass
ORDER BY c.relname
"""


@dataclass(frozen=True)
class Partition:
    """A range partition of the ledger: rows with ``start <= ledger_time < end`` (None: unbounded)."""

    name: str
    start: datetime | None
    end: datetime | None


@dataclass
class Upkeep:
    """What one upkeep changed (``skipped``: another process holds the upkeep's lock)."""

    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    emptied_rows: int = 0
    skipped: bool = False


def retention_start(now: datetime, retention_days: int) -> datetime:
    """The oldest event time the ledger still holds every event of: the start (UTC) of the day
    ``retention_days`` before ``now``. Nothing from it on is dropped; a window starting before it may
    miss events."""
    return day_start((now - timedelta(days=retention_days)).date())


def time_window(since: str | None, until: str | None) -> str:
    """SQL that keeps a read of ``events`` over event times [since, until) (placeholders such as
    ``%(since)s``; None: unbounded) to the partitions that can hold them: ``ledger_time`` is the
    event's time, except on unplaced rows. Add it to the same condition on ``ts``."""
    bounds = [f"ledger_time >= {since}"] if since else []
    bounds += [f"ledger_time < {until}"] if until else []
    if not bounds:
        return "TRUE"
    return f"({' AND '.join(bounds)} OR ledger_time = '{UNPLACED}')"


def day_start(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def day_name(day: date) -> str:
    return f"events_{day:%Y%m%d}"


def _bound(text: str) -> datetime | None:
    if text in ("MINVALUE", "MAXVALUE"):
        return None
    return datetime.fromisoformat(text.strip("'")).astimezone(UTC)


async def range_partitions(conn: psycopg.AsyncConnection) -> list[Partition]:
    """The ledger's range partitions (not the default one), oldest first."""
    await conn.execute("SET TIME ZONE 'UTC'")  # the bounds' text, parsed below
    found = []
    for name, bound in await (await conn.execute(PARTITIONS)).fetchall():
        match = BOUNDS.match(bound or "")
        if match:
            found.append(Partition(name, _bound(match.group(1)), _bound(match.group(2))))
    return sorted(found, key=lambda p: p.start or datetime.min.replace(tzinfo=UTC))


def days_to_create(partitions: list[Partition], oldest: date, newest: date) -> list[date]:
    """The days from ``oldest`` to ``newest`` (inclusive) that no partition holds any of."""
    days = []
    day = oldest
    while day <= newest:
        start, end = day_start(day), day_start(day + timedelta(days=1))
        if not any(
            (p.start is None or p.start < end) and (p.end is None or start < p.end) for p in partitions
        ):
            days.append(day)
        day += timedelta(days=1)
    return days


def past_retention(partitions: list[Partition], oldest_kept: datetime) -> list[Partition]:
    """The partitions whose whole range is older than ``oldest_kept``."""
    return [p for p in partitions if p.end is not None and p.end <= oldest_kept]


async def create_day(conn: psycopg.AsyncConnection, day: date) -> int:
    """The partition of ``day``, with the default partition's rows of that day moved into it first
    (attaching fails while the default partition holds rows of the new range); returns how many."""
    name, start, end = day_name(day), day_start(day), day_start(day + timedelta(days=1))
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        await conn.execute(f"CREATE TABLE {name} (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        cur = await conn.execute(
            f"WITH moved AS (DELETE FROM {DEFAULT_PARTITION} WHERE ledger_time >= %s AND ledger_time < %s"
            f" RETURNING *) INSERT INTO {name} SELECT * FROM moved",
            (start, end),
        )
        moved = cur.rowcount
        await conn.execute(
            f"ALTER TABLE events ATTACH PARTITION {name} FOR VALUES FROM ('{start.isoformat()}')"
            f" TO ('{end.isoformat()}')"
        )
    metrics.LEDGER_PARTITIONS.labels("created").inc()
    log.info("ledger partition %s created for %s..%s (%d rows taken from %s)", name, start.date(),
             end.date(), moved, DEFAULT_PARTITION)  # fmt: skip
    return moved


async def drop_partition(conn: psycopg.AsyncConnection, partition: Partition) -> None:
    """Detach and drop a partition past retention (its rows go with it, no DELETE)."""
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        await conn.execute(f"ALTER TABLE events DETACH PARTITION {partition.name}")
        await conn.execute(f"DROP TABLE {partition.name}")
    metrics.LEDGER_PARTITIONS.labels("dropped").inc()
    log.info("ledger partition %s dropped: every event time in it (before %s) is past retention",
             partition.name, partition.end)  # fmt: skip


async def empty_outside(conn: psycopg.AsyncConnection, oldest_kept: datetime) -> int:
    """Truncate the default partition if it holds rows and none inside retention; returns how many."""
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        cur = await conn.execute(
            f"SELECT count(*), count(*) FILTER (WHERE ledger_time >= %s) FROM {DEFAULT_PARTITION}",
            (oldest_kept,),
        )
        row = await cur.fetchone()
        rows, kept = (int(row[0]), int(row[1])) if row else (0, 0)
        if rows == 0 or kept > 0:
            return 0
        await conn.execute(f"TRUNCATE {DEFAULT_PARTITION}")
    metrics.LEDGER_PARTITIONS.labels("emptied").inc()
    log.info("ledger partition %s emptied: its %d rows were all past retention (before %s)",
             DEFAULT_PARTITION, rows, oldest_kept)  # fmt: skip
    return rows


async def upkeep(
    conn: psycopg.AsyncConnection, now: datetime, retention_days: int, ahead_days: int = AHEAD_DAYS
) -> Upkeep:
    """Create the days from the horizon to ``ahead_days`` after today that have no partition, drop
    those past retention, empty the default partition of rows past it. ``conn`` is in autocommit
    mode and used for nothing else meanwhile."""
    done = Upkeep()
    async with locks.held_if_free(conn, LOCK) as got:
        if not got:
            done.skipped = True
            return done
        oldest_kept = retention_start(now, retention_days)
        partitions = await range_partitions(conn)
        newest = (now + timedelta(days=ahead_days)).date()
        for day in days_to_create(partitions, oldest_kept.date(), newest):
            await create_day(conn, day)
            done.created.append(day_name(day))
        for partition in past_retention(partitions, oldest_kept):
            await drop_partition(conn, partition)
            done.dropped.append(partition.name)
        done.emptied_rows = await empty_outside(conn, oldest_kept)
    return done
