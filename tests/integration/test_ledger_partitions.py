"""The partitioned ledger on a real PostgreSQL: rows placed by their event time and written once
however often they are written, day partitions created ahead and dropped past retention (and what
a shorter or longer retention does to the partitions that exist), one upkeep at a time, and reads of
a window that touch only its partitions. Each test migrates a schema of its own (search_path)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY
from psycopg import sql

from stripemeter.adapters.postgres import ledger, ledger_partitions, locks, reaggregation, reconciliation
from stripemeter.adapters.postgres import replay as replay_db
from stripemeter.adapters.postgres.ledger_partitions import day_name, retention_start, upkeep
from stripemeter.adapters.postgres.ledger_reads import events_query
from stripemeter.adapters.postgres.migrate import migrate
from stripemeter.api.app import create_app as create_api
from stripemeter.domain.clock import Clock
from stripemeter.domain.config import Settings
from stripemeter.domain.kafka_access import KafkaAccess
from stripemeter.schemas.events import UsageEvent
from stripemeter.schemas.ledger_items import ledger_item
from stripemeter.schemas.records import keyed_item
from stripemeter.schemas.topics import TopicNames
from stripemeter.streams.sink import PostgresSink
from tests.integration.harness import own_schema

DAY = timedelta(days=1)


@pytest.fixture
def schema_url(stack: Settings) -> Iterator[str]:
    """A database URL whose tables live in a schema of their own, migrated, dropped after the test."""
    with own_schema(stack.database_url.value, "ledger") as url:
        migrate(url)
        yield url


@pytest.fixture
async def conn(schema_url: str) -> AsyncIterator[psycopg.AsyncConnection]:
    async with await psycopg.AsyncConnection.connect(schema_url, autocommit=True) as c:
        await c.execute("SET TIME ZONE 'UTC'")
        yield c


async def database_today(conn: psycopg.AsyncConnection) -> datetime:
    """The start (UTC) of the database's day: the migration placed its first partition by it."""
    row = await (await conn.execute("SELECT date_trunc('day', now() AT TIME ZONE 'UTC')")).fetchone()
    assert row is not None
    return datetime(row[0].year, row[0].month, row[0].day, tzinfo=UTC)


def ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def chunk(tenant: str, items: list[tuple[str, int, int]]) -> bytes:
    """A ledger record of the current format: (outcome, event time in ms, source offset) each."""
    events = [
        (
            outcome,
            UsageEvent(tenant, "requests", "acme", 1_000_000, ts, f"k{offset}", False, None, None),
            offset,
        )
        for outcome, ts, offset in items
    ]
    return orjson.dumps([2, *(ledger_item(o, keyed_item(e, 0, offset, 0)) for o, e, offset in events)])


async def write(conn: psycopg.AsyncConnection, chunks: list[bytes], rejected: list[tuple[Any, ...]]) -> None:
    """What the sink writes for one batch (stripemeter/streams/sink.py), in one transaction."""
    await ledger.create_staging(conn)
    async with conn.transaction():
        await ledger.write_ledger(conn, "usage.events", chunks, rejected)


async def placed(conn: psycopg.AsyncConnection) -> list[tuple[str, int]]:
    """(partition, source offset) of every row."""
    cur = await conn.execute("SELECT tableoid::regclass::text, source_offset FROM events ORDER BY 2, 1")
    return [(str(name), int(offset)) for name, offset in await cur.fetchall()]


async def partition_names(conn: psycopg.AsyncConnection) -> list[str]:
    return [p.name for p in await ledger_partitions.range_partitions(conn)]


def partitions_counted(action: str) -> float:
    return REGISTRY.get_sample_value("stripemeter_ledger_partitions_total", {"action": action}) or 0.0


async def test_rows_are_placed_by_event_time_and_written_once_however_often(
    conn: psycopg.AsyncConnection,
) -> None:
    today = await database_today(conn)
    now = today + timedelta(hours=12)
    done = await upkeep(conn, now, retention_days=45)
    # the old table covers every time up to the day after tomorrow; days after it are created ahead
    assert done.created == [day_name((today + n * DAY).date()) for n in range(2, 8)]
    assert await partition_names(conn) == ["events_unpartitioned", *done.created]

    in_three_days, long_ago = ms(today + 3 * DAY + timedelta(hours=1)), ms(today - 400 * DAY)
    record = chunk("t", [("counted", ms(now), 1), ("late", in_three_days, 2), ("late", long_ago, 3)])
    dead_letter = {"topic": "usage.events", "partition": 0, "offset": 4, "error": {"code": "invalid_json"}}
    rejected = [ledger.rejected_row(dead_letter, ms(today + 4 * DAY))]
    before = partitions_counted("created")
    await write(conn, [record], rejected)
    await write(conn, [record, record], rejected)  # redelivered after a crash, twice: nothing new
    # the previous release's sink writes the same inputs (it names no ledger time, its rows go to the
    # old table): nothing new either, the old table's key is the source alone
    await conn.execute(
        "INSERT INTO events (source_topic, source_partition, source_offset, source_index, outcome, ts)"
        " VALUES ('usage.events', 0, 1, 0, 'counted', now()), ('usage.events', 0, 3, 0, 'late', now())"
        " ON CONFLICT DO NOTHING"
    )
    assert await placed(conn) == [
        ("events_unpartitioned", 1),
        (day_name((today + 3 * DAY).date()), 2),
        ("events_unpartitioned", 3),
        (day_name((today + 4 * DAY).date()), 4),
    ]
    assert partitions_counted("created") == before


async def test_retention_drops_whole_days_and_follows_a_shorter_or_longer_setting(
    conn: psycopg.AsyncConnection,
) -> None:
    today = await database_today(conn)
    await upkeep(conn, today, retention_days=45)
    offsets = {n: 100 + n for n in range(0, 8)}
    await write(conn, [chunk("t", [("counted", ms(today + n * DAY + timedelta(hours=3)), o)
                                   for n, o in offsets.items()])], [])  # fmt: skip

    # 50 days later, retention 45 days: the old table and the days before day 5 are past it
    later = today + 50 * DAY + timedelta(hours=6)
    dropped_before = partitions_counted("dropped")
    done = await upkeep(conn, later, retention_days=45)
    assert retention_start(later, 45) == today + 5 * DAY
    assert done.dropped == ["events_unpartitioned"] + [day_name((today + n * DAY).date()) for n in (2, 3, 4)]
    assert partitions_counted("dropped") == dropped_before + 4
    assert sorted(o for _, o in await placed(conn)) == [offsets[n] for n in (5, 6, 7)]
    names = await partition_names(conn)
    assert names[0] == day_name((today + 5 * DAY).date()) and names[-1] == day_name((later + 7 * DAY).date())

    # shorter (10 days): the days before it go at the next upkeep, nothing else changes
    done = await upkeep(conn, later, retention_days=10)
    assert done.created == []
    assert done.dropped == [day_name((today + n * DAY).date()) for n in range(5, 40)]
    assert await placed(conn) == []
    assert (await partition_names(conn))[0] == day_name((later - 10 * DAY).date())

    # an event of 20 days ago arrives meanwhile: no day holds it, the default partition does
    twenty_days_ago = ms(later - 20 * DAY)
    await write(conn, [chunk("t", [("late", twenty_days_ago, 500)])], [])
    assert await placed(conn) == [("events_outside", 500)]

    # longer again (30 days): the missing days are created, the event moves into its day
    done = await upkeep(conn, later, retention_days=30)
    assert done.created == [day_name((later - n * DAY).date()) for n in range(30, 10, -1)]
    assert await placed(conn) == [(day_name((later - 20 * DAY).date()), 500)]
    assert done.dropped == [] and done.emptied_rows == 0

    # an event older than every retention lands in the default partition, which is emptied (not
    # deleted from) once nothing in it is inside retention
    await write(conn, [chunk("t", [("late", ms(later - 400 * DAY), 501)])], [])
    emptied_before = partitions_counted("emptied")
    done = await upkeep(conn, later, retention_days=30)
    assert done.emptied_rows == 1 and partitions_counted("emptied") == emptied_before + 1
    assert await placed(conn) == [(day_name((later - 20 * DAY).date()), 500)]


async def test_one_upkeep_at_a_time(schema_url: str, conn: psycopg.AsyncConnection) -> None:
    today = await database_today(conn)
    async with (
        await psycopg.AsyncConnection.connect(schema_url, autocommit=True) as other,
        locks.held_if_free(other, ledger_partitions.LOCK) as got,
    ):
        assert got
        done = await upkeep(conn, today, retention_days=45)
        assert done.skipped and done.created == []
    assert (await upkeep(conn, today, retention_days=45)).created


async def explain(conn: psycopg.AsyncConnection, query: str | sql.Composed, params: dict[str, Any]) -> str:
    await conn.execute("SET enable_seqscan = off")  # tiny tables: the plan the indexes allow
    statement = sql.SQL("EXPLAIN ") + (sql.SQL(query) if isinstance(query, str) else query)
    cur = await conn.execute(statement, params)
    return "\n".join(str(row[0]) for row in await cur.fetchall())


async def test_the_sinks_upkeep_keeps_what_the_real_clock_keeps(
    schema_url: str, conn: psycopg.AsyncConnection
) -> None:
    """A worker whose clock is moved 400 days ahead (STRIPEMETER_CLOCK_OFFSET_SECONDS, as tests and
    demos do) on a shared database: its sink's upkeep drops nothing the real time keeps."""
    today = await database_today(conn)
    ahead = Clock.starting_at(today + 400 * DAY)
    sink = PostgresSink(KafkaAccess("unused:9092"), TopicNames("p", "a"), "unused", schema_url, clock=ahead)
    await sink.ledger_upkeep()
    assert await partition_names(conn) == ["events_unpartitioned"] + [
        day_name((today + n * DAY).date()) for n in range(2, 8)
    ]


def scanned(plan: str, alias: str) -> set[str]:
    """The ledger partitions the plan reads as ``alias`` (PostgreSQL names them alias_1, alias_2...)."""
    return set(re.findall(rf"on (events_\w+) {alias}(?:_\d+)?\b", plan))


async def test_reads_of_a_window_touch_its_days_only_through_their_indexes(
    conn: psycopg.AsyncConnection,
) -> None:
    today = await database_today(conn)
    later = today + 50 * DAY
    await upkeep(conn, later, retention_days=45)  # the old table is gone: only day partitions
    since, until = later - 3 * DAY, later - 2 * DAY
    window_day = {day_name(since.date())}
    scope = asdict(replay_db.Scope("t", ["requests"], None, since, until))

    # a replay's too-late events of the window: its day (and the default partition's rows) only; whether
    # the stream counted an event's key looks in every day through the key's index (any event time)
    text = await explain(conn, replay_db.PENDING_LATE, scope)
    assert scanned(text, "e") == window_day | {"events_outside"}, text
    assert len(scanned(text, "d")) == len(await partition_names(conn)) + 1, text
    text = await explain(conn, replay_db.SCANNED, scope)
    assert scanned(text, "events") == window_day | {"events_outside"}, text
    text = await explain(
        conn, reconciliation.LATE, {"tenant": "t", "metric": None, "start": since, "end": until}
    )
    assert scanned(text, "e") == window_day | {"events_outside"}, text
    # from a time on (a mapping change's preview): the days before it are not read
    older = day_name((since - DAY).date())
    text = await explain(conn, reaggregation.PREVIEW, {"tenant": "t", "metric": "requests", "since": since})
    assert older not in scanned(text, "e") | scanned(text, "events"), text
    assert window_day <= scanned(text, "e") & scanned(text, "events"), text
    query, params = events_query("t", "requests", None, since, until, 50, None)
    text = await explain(conn, query, params)
    assert scanned(text, "events") == window_day | {"events_outside"}, text
    assert "Seq Scan" not in text and "Sort  " not in text.split("Limit")[1], text


async def test_reads_starting_before_retention_are_refused_naming_since(env: Settings) -> None:
    """Replay and the events listing, under a retention of 10 days and then of 15 (the setting
    changed): a window from 12 days ago is refused, then accepted; from 9 days ago always accepted."""
    replay = {"tenantId": "t", "metrics": ["requests"], "mode": "dry-run"}
    for days, refused in ((10, True), (15, False)):
        client = TestClient(TestServer(create_api(replace(env, ledger_retention_days=days))))
        await client.start_server()
        try:
            for since, before in (("-P12D", refused), ("-P9D", False)):
                listing = await client.get("/v1/events", params={"tenantId": "t", "since": since})
                replayed = await client.post("/v1/replay", json={**replay, "since": since, "until": "-P8D"})
                for response in (listing, replayed):
                    body = await response.json()
                    if before:
                        assert response.status == 400, body
                        assert body["error"]["field"] == "since", body
                        assert f"STRIPEMETER_LEDGER_RETENTION_DAYS={days}" in body["error"]["message"], body
                    else:
                        assert body.get("error", {}).get("field") != "since", body
                assert listing.status == (400 if before else 200)
        finally:
            await client.close()
