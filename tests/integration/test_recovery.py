"""Recovery of PostgreSQL's derived tables against the real database and broker: a restore to an earlier
point (a database of the test's own, copied and restored), a sink killed between its write and its
Kafka commit (a cancelled task; a process killed -9), a deployment whose database stores no offsets
yet, offsets retention removed, PostgreSQL failing at an assignment, rebalances between two sinks, and
an operator's rewind. No ledger row may be lost or doubled."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import orjson
import psycopg
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from aiokafka.structs import TopicPartition
from prometheus_client import REGISTRY

from stripemeter.adapters.kafka import batching
from stripemeter.adapters.kafka.client_auth import client_kwargs
from stripemeter.adapters.kafka.positions import group_positions
from stripemeter.adapters.postgres import sink_offsets
from stripemeter.adapters.postgres.migrate import migrate
from stripemeter.cli import main
from stripemeter.domain.config import Settings, settings_env
from stripemeter.schemas.deltas import Delta, encode_delta
from stripemeter.schemas.topics import TopicNames
from stripemeter.services.sink_recovery import positions
from stripemeter.streams.sink import PostgresSink
from stripemeter.tools.local.postgres import LocalPostgres, find_bindir
from tests.integration.client import eventually

pytestmark = pytest.mark.exactly_once  # never rerun by CI; repeated by ./dev soak

HOUR_MS = 3_600_000
T0 = 1_790_000_000_000 // HOUR_MS * HOUR_MS  # an hour boundary in 2026
ITEMS = 5  # ledger items per record
WAIT = 60.0


@dataclass
class Workload:
    """Ledger records (ITEMS events each, one source offset per event) and one counter's deltas."""

    env: Settings
    names: TopicNames
    tenant: str
    records: int = 0
    seq: int = 0

    async def produce(self, count: int) -> None:
        producer = AIOKafkaProducer(**client_kwargs(self.env.kafka), acks="all")
        await producer.start()
        try:
            for _ in range(count):
                n = self.records
                chunk = [
                    ["counted", self.tenant, "requests", "acme", 1_000_000, T0 + n, f"k{n}-{i}", 0, None,
                     None, n % 2, n * ITEMS + i, 0]
                    for i in range(ITEMS)
                ]  # fmt: skip
                await producer.send_and_wait(self.names.ledger, orjson.dumps(chunk), partition=n % 2)
                self.seq += 1
                delta = Delta(self.tenant, "requests", "acme", T0, self.seq * 1_000_000, self.seq)
                await producer.send_and_wait(self.names.deltas, encode_delta(delta), partition=0)
                self.records += 1
        finally:
            await producer.stop()

    def expected(self) -> set[tuple[int, int]]:
        return {(n % 2, n * ITEMS + i) for n in range(self.records) for i in range(ITEMS)}


async def ledger_rows(url: str, tenant: str) -> list[tuple[int, int]]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT source_partition, source_offset FROM events WHERE tenant_id = %s", (tenant,)
        )
        return [(p, o) for p, o in await cur.fetchall()]


async def counter(url: str, tenant: str) -> tuple[int, int] | None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute("SELECT total_micros, seq FROM counters WHERE tenant_id = %s", (tenant,))
        row = await cur.fetchone()
        return None if row is None else (int(row[0]), int(row[1]))


async def wait_all_written(url: str, work: Workload) -> None:
    """Every produced event has its ledger row, exactly once, and the counter its newest seq."""

    async def done() -> bool:
        return len(await ledger_rows(url, work.tenant)) >= len(work.expected()) and (
            await counter(url, work.tenant)
        ) == (work.seq * 1_000_000, work.seq)

    await eventually(done, what=f"{work.records} records in PostgreSQL")
    rows = await ledger_rows(url, work.tenant)
    assert len(rows) == len(set(rows)) and set(rows) == work.expected()


async def written_by_a_sink(env: Settings, url: str, work: Workload, records: int) -> None:
    """A sink runs until ``records`` more records are produced and written, then stops."""
    sink = RunningSink(env, url)
    await work.produce(records)
    await wait_all_written(url, work)
    await sink.stop()


class RunningSink:
    """A PostgreSQL sink of the test's app as a task of this event loop."""

    def __init__(self, env: Settings, url: str):
        names = TopicNames(env.topic_prefix, env.app_id)
        self.sink = PostgresSink(env.kafka, names, names.sink_group, url, clock=env.clock)
        self.task = asyncio.create_task(self.sink.run())

    async def stop(self) -> None:
        self.sink.stop()
        await asyncio.wait_for(self.task, 30)

    async def kill(self) -> None:
        """Cancelled wherever it is: as good as kill -9 for what it committed."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self.task, 30)


def counter_value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class OwnDatabase:
    """A database of this test's own on the stack's PostgreSQL: migrated, copied, restored, dropped."""

    def __init__(self, stack: Settings):
        bindir = find_bindir()
        assert bindir is not None
        self.pg = LocalPostgres.from_settings(stack, bindir)
        self.base_url = stack.database_url.value
        self.name = f"recovery_{uuid.uuid4().hex[:8]}"
        self.snapshot = f"{self.name}_snap"
        self.created: list[str] = []

    def url(self, database: str | None = None) -> str:
        return urlunparse(urlparse(self.base_url)._replace(path=f"/{database or self.name}"))

    def create(self, name: str, template: str | None = None) -> None:
        """A new database owned by the application's role (from ``template`` if given: nobody may be
        connected to it)."""
        source = f' TEMPLATE "{template}"' if template else ""
        self.pg.psql(f'CREATE DATABASE "{name}"{source} OWNER "{self.pg.user}"')
        self.created.append(name)

    def drop(self, name: str) -> None:
        self.pg.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def drop_all(self) -> None:
        for name in self.created:
            self.drop(name)


@pytest_asyncio.fixture
async def own_db(stack: Settings) -> AsyncIterator[OwnDatabase]:
    db = OwnDatabase(stack)
    db.create(db.name)
    try:
        migrate(db.url())
        yield db
    finally:
        db.drop_all()


async def test_a_restore_to_an_earlier_point_loses_no_ledger_row(env: Settings, own_db: OwnDatabase) -> None:
    """The sink writes, the database is copied (the backup), the sink writes more and commits it to
    Kafka, the copy is restored: the sink goes back to the offsets the restored database stores and
    writes again what the restore took, each row once."""
    url = own_db.url()
    work = Workload(env, TopicNames(env.topic_prefix, env.app_id), f"restore-{uuid.uuid4().hex[:8]}")
    sink = RunningSink(env, url)
    await work.produce(20)
    await wait_all_written(url, work)
    await sink.stop()  # a template database has no connections
    own_db.create(own_db.snapshot, template=own_db.name)  # the backup: the earlier point
    before = len(work.expected())

    sink = RunningSink(env, url)
    await work.produce(20)
    await wait_all_written(url, work)
    await sink.stop()
    committed = (
        await group_positions(env.kafka, TopicNames(app_id=env.app_id).sink_group, [work.names.ledger])
    ).committed
    assert sum(committed.values()) == 40  # Kafka's commit says the sink wrote all 40 records

    own_db.drop(own_db.name)  # the restore: PostgreSQL as it was at the backup
    own_db.create(own_db.name, template=own_db.snapshot)
    assert len(await ledger_rows(url, work.tenant)) == before
    [ledger_0] = [p for p in await positions(env.kafka, url, work.names) if p.topic == work.names.ledger][:1]
    assert ledger_0.database == 10 and ledger_0.committed == 20
    assert ledger_0.state == "Kafka's commit is ahead: the sink writes 10 offsets again"

    sink = RunningSink(env, url)
    await work.produce(5)  # and the pipeline goes on
    await wait_all_written(url, work)
    await sink.stop()


async def test_a_sink_killed_between_its_write_and_its_commit_reads_nothing_again(
    env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = env.database_url.value
    work = Workload(env, TopicNames(env.topic_prefix, env.app_id), f"kill-{uuid.uuid4().hex[:8]}")
    written = asyncio.Event()

    async def never_commit(consumer: Any, batch: Any) -> None:
        written.set()
        await asyncio.Event().wait()  # killed here: rows and offsets in PostgreSQL, nothing in Kafka

    monkeypatch.setattr(batching, "commit_handled", never_commit)
    sink = RunningSink(env, url)
    await work.produce(10)
    await asyncio.wait_for(written.wait(), WAIT)
    await sink.kill()
    monkeypatch.undo()
    group = await group_positions(env.kafka, TopicNames(app_id=env.app_id).sink_group, [work.names.ledger])
    assert group.committed == {}  # Kafka would have the next sink read everything again
    rewrites = counter_value("stripemeter_sink_ledger_rewrites_total")

    await written_by_a_sink(env, url, work, 10)
    assert counter_value("stripemeter_sink_ledger_rewrites_total") == rewrites  # no record written twice


async def test_a_database_without_stored_offsets_goes_on_from_kafkas_commit(env: Settings) -> None:
    """A deployment upgraded from a version that kept its offsets in Kafka only: the sink takes Kafka's
    committed offsets, re-reads nothing, and stores an offset for every partition it is given (those
    with no commit at the log's start), so a later restore has an offset for each."""
    url = env.database_url.value
    names = TopicNames(env.topic_prefix, env.app_id)
    work = Workload(env, names, f"upgrade-{uuid.uuid4().hex[:8]}")
    await written_by_a_sink(env, url, work, 10)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(
            "DELETE FROM sink_offsets WHERE group_id = %s", (TopicNames(app_id=env.app_id).sink_group,)
        )
    rewrites = counter_value("stripemeter_sink_ledger_rewrites_total")

    sink = RunningSink(env, url)
    await work.produce(6)
    await wait_all_written(url, work)
    await sink.stop()
    assert counter_value("stripemeter_sink_ledger_rewrites_total") == rewrites
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        stored = await sink_offsets.load(
            conn, TopicNames(app_id=env.app_id).sink_group, [names.ledger, names.dlq, names.deltas]
        )
    assert stored == {
        (names.ledger, 0): 8, (names.ledger, 1): 8, (names.deltas, 0): 16, (names.deltas, 1): 0,
        (names.dlq, 0): 0, (names.dlq, 1): 0,
    }  # fmt: skip


async def test_offsets_retention_removed_are_counted_and_the_sink_goes_on(env: Settings) -> None:
    """The database is behind the log's start (restored from a backup older than the topics keep):
    what is gone is logged and counted, the sink goes on from the log's start."""
    url = env.database_url.value
    names = TopicNames(env.topic_prefix, env.app_id)
    work = Workload(env, names, f"retention-{uuid.uuid4().hex[:8]}")
    sink = RunningSink(env, url)
    await work.produce(8)  # ledger partitions 0 and 1: offsets 0..3 each
    await wait_all_written(url, work)
    await sink.stop()
    admin = AIOKafkaAdminClient(**client_kwargs(env.kafka))
    await admin.start()
    try:  # retention removes ledger[0]'s first three records
        await admin.delete_records({TopicPartition(names.ledger, 0): RecordsToDelete(before_offset=3)})
    finally:
        await admin.close()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("DELETE FROM events WHERE tenant_id = %s", (work.tenant,))  # the older backup
        await sink_offsets.set_offsets(
            conn, TopicNames(app_id=env.app_id).sink_group, {(names.ledger, 0): 0, (names.ledger, 1): 0}
        )
    lost = counter_value("stripemeter_sink_offsets_lost_total", topic=names.ledger)

    sink = RunningSink(env, url)
    await eventually(
        lambda: _count_is(url, work.tenant, (1 + 4) * ITEMS), what="the records retention kept written again"
    )
    await sink.stop()
    assert counter_value("stripemeter_sink_offsets_lost_total", topic=names.ledger) == lost + 3
    sink = RunningSink(env, url)  # what is gone is counted once, not at every assignment
    await eventually(lambda: _assigned(sink), what="the partitions assigned again")
    await sink.stop()
    assert counter_value("stripemeter_sink_offsets_lost_total", topic=names.ledger) == lost + 3
    rows = set(await ledger_rows(url, work.tenant))
    assert rows == {(p, o) for p, o in work.expected() if not (p == 0 and o < 3 * 2 * ITEMS)}


async def _assigned(sink: RunningSink) -> bool:
    return sink.sink.resumed > 0 and not sink.sink.unresumed


async def _count_is(url: str, tenant: str, count: int) -> bool:
    return len(await ledger_rows(url, tenant)) == count


def run_cli(env: Settings, monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    """``stripemeter ARGV`` as an operator runs it, configured by the environment (in a thread: the
    command runs its own event loop)."""
    for name, value in settings_env(env).items():
        monkeypatch.setenv(name, value)
    return main(list(argv))


def shown_row(table: str, topic: str, partition: int) -> list[str]:
    """A partition's line of the table `sink-offsets` prints (the state's words joined)."""
    for line in table.splitlines():
        cells = line.split()
        if cells[:2] == [topic, str(partition)]:
            return [*cells[:6], " ".join(cells[6:])]
    raise AssertionError(f"{topic}[{partition}] not shown in:\n{table}")


async def test_a_rewind_writes_again_what_the_topics_hold(
    env: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rows lost from the derived tables while their records are in Kafka: `sink-rewind --to earliest`
    (refused while a sink runs) and the sink's next start bring them back, each once."""
    url = env.database_url.value
    names = TopicNames(env.topic_prefix, env.app_id)
    work = Workload(env, names, f"rewind-{uuid.uuid4().hex[:8]}")
    sink = RunningSink(env, url)
    await work.produce(10)
    await wait_all_written(url, work)
    assert await asyncio.to_thread(run_cli, env, monkeypatch, "sink-rewind", "--to", "earliest") == 1
    assert "consumer(s) of" in capsys.readouterr().err  # the sink still runs: refused, said in words
    await sink.stop()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(
            "DELETE FROM events WHERE tenant_id = %s AND source_offset %% 3 = 0", (work.tenant,)
        )
        await conn.execute("DELETE FROM counters WHERE tenant_id = %s", (work.tenant,))

    assert await asyncio.to_thread(run_cli, env, monkeypatch, "sink-rewind", "--to", "earliest") == 0
    shown = capsys.readouterr().out
    assert shown_row(shown, names.ledger, 0) == [
        names.ledger,
        "0",
        "0",
        "5",
        "0",
        "5",
        "Kafka's commit is ahead: the sink writes 5 offsets again",
    ]
    assert "rewound:" in shown
    assert {(p.topic, p.database) for p in await positions(env.kafka, url, names)} == {
        (t, 0) for t in (names.ledger, names.dlq, names.deltas)
    }
    sink = RunningSink(env, url)
    await wait_all_written(url, work)
    await sink.stop()
    assert await asyncio.to_thread(run_cli, env, monkeypatch, "sink-offsets") == 0
    assert shown_row(capsys.readouterr().out, names.ledger, 0)[:4] == [names.ledger, "0", "5", "5"]


async def test_partitions_wait_while_postgresql_cannot_say_where_to_resume(
    env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The consumer swallows what a rebalance callback raises: were the sink to read on from Kafka's
    commit when PostgreSQL fails at an assignment, a restored database would lose rows for good."""
    url = env.database_url.value
    names = TopicNames(env.topic_prefix, env.app_id)
    work = Workload(env, names, f"paused-{uuid.uuid4().hex[:8]}")
    await written_by_a_sink(env, url, work, 10)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:  # a restore
        await conn.execute("DELETE FROM events WHERE tenant_id = %s", (work.tenant,))
        await sink_offsets.set_offsets(
            conn, TopicNames(app_id=env.app_id).sink_group, {(names.ledger, 0): 0, (names.ledger, 1): 0}
        )

    failures = 0
    recovered = False
    load = sink_offsets.load

    async def failing_load(*args: Any) -> dict[tuple[str, int], int]:
        nonlocal failures
        if not recovered:
            failures += 1
            raise psycopg.OperationalError("PostgreSQL is restarting")
        return await load(*args)

    monkeypatch.setattr(sink_offsets, "load", failing_load)
    sink = RunningSink(env, url)
    await eventually(lambda: _true(failures > 0), what="an assignment PostgreSQL failed")
    await work.produce(4)  # new records, which a sink reading from Kafka's commit would write at once
    seen = failures
    await eventually(lambda: _true(failures >= seen + 3), what="three more tries")
    assert await ledger_rows(url, work.tenant) == []
    recovered = True
    await wait_all_written(url, work)
    await sink.stop()


async def _true(value: bool) -> bool:
    return value


async def test_two_sinks_sharing_the_partitions_write_each_row_once(env: Settings) -> None:
    """Rebalances take partitions from a sink mid-stream and give them to another, which seeks to the
    offsets the database stores; the stored offsets end at the logs' ends."""
    url = env.database_url.value
    names = TopicNames(env.topic_prefix, env.app_id)
    work = Workload(env, names, f"shared-{uuid.uuid4().hex[:8]}")
    first = RunningSink(env, url)
    await work.produce(10)
    await wait_all_written(url, work)
    second = RunningSink(env, url)
    await eventually(lambda: _true(second.sink.resumed > 0), what="the second sink given partitions")
    await work.produce(10)
    await wait_all_written(url, work)
    await first.stop()
    await work.produce(10)
    await wait_all_written(url, work)
    await second.stop()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        stored = await sink_offsets.load(
            conn, TopicNames(app_id=env.app_id).sink_group, [names.ledger, names.deltas]
        )
    assert stored == {
        (names.ledger, 0): 15,
        (names.ledger, 1): 15,
        (names.deltas, 0): 30,
        (names.deltas, 1): 0,
    }


class SinkProcess:
    """``stripemeter sink`` as a process of its own, against ``url``."""

    def __init__(self, env: Settings, url: str, log_path: Path):
        out = open(log_path, "ab")  # noqa: SIM115 - handed to the child
        self.log_path = log_path
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stripemeter", "sink"],
            env={**os.environ, **settings_env(env), "DATABASE_URL": url},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill9(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise AssertionError(f"the sink did not stop:\n{self.log_path.read_text()[-3000:]}") from None


async def connections_to(base_url: str, database: str) -> int:
    async with await psycopg.AsyncConnection.connect(base_url, autocommit=True) as conn:
        cur = await conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (database,))
        row = await cur.fetchone()
        return int(row[0]) if row else 0


async def test_a_sink_process_killed_9_mid_stream_then_a_restore(
    env: Settings, own_db: OwnDatabase, tmp_path: Path
) -> None:
    """The sink as its own process, killed -9 while it writes (wherever it is: between a write and its
    commit, or in one), the database then copied, more written, the copy restored: every row once."""
    url = own_db.url()
    work = Workload(env, TopicNames(env.topic_prefix, env.app_id), f"kill9-{uuid.uuid4().hex[:8]}")
    sink = SinkProcess(env, url, tmp_path / "sink.log")
    try:
        await work.produce(15)
        await wait_all_written(url, work)
        written = len(work.expected())
        producing = asyncio.create_task(work.produce(15))
        await eventually(lambda: _more_than(url, work.tenant, written), what="rows of the second records")
        sink.kill9()
        await producing
        await eventually(
            lambda: _none(own_db.base_url, own_db.name), what="the killed sink's connection closed"
        )
        own_db.create(own_db.snapshot, template=own_db.name)  # the backup, taken after the kill

        sink = SinkProcess(env, url, tmp_path / "sink.log")
        await wait_all_written(url, work)
        await work.produce(10)
        await wait_all_written(url, work)
        sink.stop()
        own_db.drop(own_db.name)  # the restore
        own_db.create(own_db.name, template=own_db.snapshot)

        sink = SinkProcess(env, url, tmp_path / "sink.log")
        await work.produce(5)
        await wait_all_written(url, work)
    finally:
        sink.stop()


async def _more_than(url: str, tenant: str, count: int) -> bool:
    return len(await ledger_rows(url, tenant)) > count


async def _none(base_url: str, database: str) -> bool:
    return await connections_to(base_url, database) == 0
