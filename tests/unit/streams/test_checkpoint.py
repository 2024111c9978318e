"""The checkpoint's order (streams/checkpoint.py), with fakes for the meter, the tables and the producer.

What it promises: (1) dedupe and counter changelogs, ledger, too-late and dead-letter records are sent
and delivered; only then (2) watermark changelogs and usage.deltas; only once those are delivered
(3) each changelog partition's persisted offset is recorded and (4) the messages are acknowledged. A
failure anywhere before 4 acknowledges nothing, so the input is read again.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiokafka.errors import KafkaError

from stripemeter.core.counting import counter_key, stream_key
from stripemeter.core.metering import Outcomes
from stripemeter.schemas.deltas import Delta, decode_delta
from stripemeter.schemas.partitioning import delta_routing_key, partition_for
from stripemeter.schemas.topics import TopicNames
from stripemeter.streams.checkpoint import Checkpointer

NAMES = TopicNames(app_id="sm")
DELTA_PARTITIONS = 3
BUCKET_MS = 1_700_000_000_000 // 3_600_000 * 3_600_000
CKEY = counter_key("t1", "requests", "acme", BUCKET_MS).encode()
SKEY = stream_key("t1", "requests", "acme").encode()


class FakeTable:
    """A ChangelogState as the checkpoint sees it: writes staged until taken, and per changelog
    partition how far it is persisted."""

    def __init__(self, name: str, log: list[str]):
        self.name = name
        self.changelog_topic = NAMES.changelog(name)
        self.log = log
        self.staged: dict[int, dict[bytes, bytes | None]] = defaultdict(dict)
        self.stored: dict[int, dict[bytes, bytes | None]] = defaultdict(dict)
        self.persisted: dict[int, int] = {}

    def put(self, partition: int, key: bytes, value: bytes | None) -> None:
        self.staged[partition][key] = value

    def get(self, partition: int, key: bytes) -> bytes | None:
        if key in self.staged[partition]:
            return self.staged[partition][key]
        return self.stored[partition].get(key)

    def take_staged(self) -> dict[int, dict[bytes, bytes | None]]:
        staged, self.staged = self.staged, defaultdict(dict)
        for partition, changes in staged.items():
            self.stored[partition].update(changes)
        return staged

    def mark_persisted(self, partition: int, offset: int) -> None:
        self.log.append(f"persisted {self.name}[{partition}]@{offset}")
        self.persisted[partition] = offset


class FakeMetering:
    def __init__(self) -> None:
        self.outcomes = Outcomes()

    def take_outcomes(self) -> Outcomes:
        taken, self.outcomes = self.outcomes, Outcomes()
        return taken


class FakeBatch:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self.records: list[tuple[bytes | None, bytes | None]] = []

    def append(self, key: bytes | None, value: bytes | None, timestamp: int | None) -> object | None:
        if len(self.records) == self.capacity:
            return None  # full, as aiokafka's batch says
        self.records.append((key, value))
        return object()


class FakeProducer:
    """Logs every send; delivers at once (``deliver_at_once``) or when ``deliver`` is called. Topics in
    ``failing`` fail their deliveries."""

    def __init__(self, log: list[str], deliver_at_once: bool = True, batch_size: int = 100):
        self.log = log
        self.deliver_at_once = deliver_at_once
        self.batch_size = batch_size
        self.failing: set[str] = set()
        self.next_offset: dict[tuple[str, int | None], int] = defaultdict(int)
        self.sent: list[tuple[str, int | None, list[tuple[bytes | None, bytes | None]]]] = []
        self.in_flight: list[tuple[str, asyncio.Future[Any], int]] = []

    def create_batch(self) -> FakeBatch:
        return FakeBatch(self.batch_size)

    async def send_batch(self, batch: FakeBatch, topic: str, partition: int | None) -> asyncio.Future[Any]:
        return self._send(topic, partition, batch.records)

    async def send(self, topic: str, value: bytes) -> asyncio.Future[Any]:
        return self._send(topic, None, [(None, value)])

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(DELTA_PARTITIONS))

    def _send(
        self, topic: str, partition: int | None, records: list[tuple[bytes | None, bytes | None]]
    ) -> asyncio.Future[Any]:
        self.log.append(f"send {topic}" + ("" if partition is None else f"[{partition}]"))
        self.sent.append((topic, partition, records))
        base = self.next_offset[topic, partition]
        self.next_offset[topic, partition] += len(records)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.in_flight.append((topic, future, base))
        if self.deliver_at_once:
            self.deliver()
        return future

    def deliver(self) -> None:
        for topic, future, base in self.in_flight:
            if topic in self.failing:
                future.set_exception(KafkaError(f"delivery to {topic} failed"))
            else:
                future.set_result(SimpleNamespace(offset=base))
        self.in_flight = []

    def topics(self) -> list[str]:
        return [topic for topic, _, _ in self.sent]


class FakeEvent:
    def __init__(self, name: str, log: list[str]):
        self.name = name
        self.log = log

    def ack(self) -> None:
        self.log.append(f"ack {self.name}")


class World:
    """A checkpointer over fakes, and the log of what happened in which order."""

    def __init__(self, deliver_at_once: bool = True, batch_size: int = 100):
        self.log: list[str] = []
        self.tables = {name: FakeTable(name, self.log) for name in ("dedupe", "counters", "watermarks")}
        self.metering = FakeMetering()
        self.producer = FakeProducer(self.log, deliver_at_once, batch_size)
        self.checkpointer = Checkpointer(
            self.metering,  # type: ignore[arg-type]
            self.tables,  # type: ignore[arg-type]
            NAMES,
            self.producer,
        )

    def handled(self, name: str, partition: int = 0, offset: int = 5, watermark_ms: int = BUCKET_MS) -> None:
        """What the meter leaves after counting one event of message ``name``: its dedupe entry, counter,
        watermark, ledger item and touched counter, and the message waiting for acknowledgement."""
        self.tables["dedupe"].put(partition, f"t1|{name}".encode(), b"entry")
        self.tables["counters"].put(partition, CKEY, orjson.dumps([3_000_000, 2, offset, -1]))
        self.tables["watermarks"].put(partition, SKEY, str(watermark_ms).encode())
        self.metering.outcomes.ledger.append(["counted", name])
        self.metering.outcomes.touched[CKEY] = partition
        self.checkpointer.add(FakeEvent(name, self.log))


STEP_1 = {NAMES.changelog("dedupe"), NAMES.changelog("counters"), NAMES.ledger, NAMES.late, NAMES.dlq}
STEP_2 = {NAMES.changelog("watermarks"), NAMES.deltas}


def step(entry: str) -> int:
    """Which step of the checkpoint a log entry belongs to."""
    kind, _, rest = entry.partition(" ")
    if kind == "send":
        return 1 if rest.split("[")[0] in STEP_1 else 2
    return {"persisted": 3, "ack": 4}[kind]


async def settle() -> None:
    """Let every task that can run, run (no timing: only the event loop's turns)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def test_everything_is_durable_before_any_message_is_acknowledged() -> None:
    world = World()
    world.handled("m1")
    world.handled("m2", partition=1, offset=7)
    world.metering.outcomes.late.append(b"late record")
    world.metering.outcomes.dead.append(b"dead letter")

    assert await world.checkpointer.run() == 1

    assert [step(entry) for entry in world.log] == sorted(step(entry) for entry in world.log)
    assert {entry for entry in world.log if step(entry) == 1} == {
        "send sm-dedupe-changelog[0]",
        "send sm-dedupe-changelog[1]",
        "send sm-counters-changelog[0]",
        "send sm-counters-changelog[1]",
        "send sm-ledger",
        "send usage.late",
        "send usage.events.dlq",
    }
    assert {entry.split("[")[0] for entry in world.log if step(entry) == 2} == {
        "send sm-watermarks-changelog",
        "send usage.deltas",
    }
    assert {entry.split("@")[0] for entry in world.log if step(entry) == 3} == {
        f"persisted {table}[{partition}]" for table in world.tables for partition in (0, 1)
    }
    assert [entry for entry in world.log if step(entry) == 4] == ["ack m1", "ack m2"]
    assert await world.checkpointer.wait_idle()


async def test_each_step_waits_for_the_deliveries_of_the_one_before() -> None:
    """Sent is not enough: watermarks and deltas go out only once step 1 is delivered, and nothing is
    acknowledged before step 2 is delivered too."""
    world = World(deliver_at_once=False)
    world.handled("m1")
    run = asyncio.ensure_future(world.checkpointer.run())
    await settle()
    assert world.log and all(step(entry) == 1 for entry in world.log)

    world.producer.deliver()
    await settle()
    assert {step(entry) for entry in world.log} == {1, 2}
    assert not run.done()

    world.producer.deliver()
    await run
    assert [entry for entry in world.log if step(entry) == 4] == ["ack m1"]


@pytest.mark.parametrize(
    "failing",
    [
        NAMES.changelog("dedupe"),
        NAMES.changelog("counters"),
        NAMES.ledger,
        NAMES.late,
        NAMES.dlq,
        NAMES.changelog("watermarks"),
        NAMES.deltas,
    ],
)
async def test_a_failed_delivery_acknowledges_nothing(failing: str) -> None:
    world = World()
    world.handled("m1")
    world.metering.outcomes.late.append(b"late record")
    world.metering.outcomes.dead.append(b"dead letter")
    world.producer.failing.add(failing)

    with pytest.raises(KafkaError):
        await world.checkpointer.run()

    assert not [entry for entry in world.log if step(entry) >= 3]
    assert all(not table.persisted for table in world.tables.values())
    if failing in STEP_1:  # a durable watermark would claim decisions that are not durable
        assert not STEP_2 & set(world.producer.topics())
    assert world.checkpointer.failed
    assert not await world.checkpointer.wait_idle()


async def test_a_send_that_raises_acknowledges_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    world = World()
    world.handled("m1")

    async def broken(topic: str, value: bytes) -> asyncio.Future[Any]:
        raise KafkaError("producer closed")

    monkeypatch.setattr(world.producer, "send", broken)
    with pytest.raises(KafkaError):
        await world.checkpointer.run()
    assert not [entry for entry in world.log if step(entry) >= 2]
    assert not await world.checkpointer.wait_idle()


async def test_the_persisted_offset_is_the_last_changelog_record_of_the_partition() -> None:
    """Records of one partition may span several batches; recovery resumes after the last one."""
    world = World(batch_size=2)
    world.producer.next_offset[NAMES.changelog("counters"), 0] = 10
    for key in (b"a", b"b", b"c"):
        world.tables["counters"].put(0, key, b"[1,1,1,-1]")
    world.tables["dedupe"].put(0, b"d", None)  # a deletion is a changelog record too
    world.checkpointer.add(FakeEvent("m1", world.log))

    await world.checkpointer.run()

    assert world.tables["counters"].persisted == {0: 12}  # batches at 10 (two records) and 12 (one)
    assert world.tables["dedupe"].persisted == {0: 0}
    assert world.tables["watermarks"].persisted == {}  # nothing written: nothing sent, nothing recorded
    changelog = [records for topic, _, records in world.producer.sent if topic == NAMES.changelog("dedupe")]
    assert changelog == [[(b"d", None)]]


async def test_one_delta_per_touched_counter_with_its_current_total_and_seq() -> None:
    world = World()
    other = counter_key("t1", "requests", "zed", BUCKET_MS).encode()
    world.tables["counters"].stored[0][CKEY] = orjson.dumps([1_000_000, 1, 3, -1])
    world.tables["counters"].put(0, CKEY, orjson.dumps([2_500_000, 2, 4, -1]))  # staged: the current one
    world.tables["counters"].stored[1][other] = orjson.dumps([7_000_000, 9, 8, -1])
    world.metering.outcomes.touched.update({CKEY: 0, other: 1})
    world.checkpointer.add(FakeEvent("m1", world.log))

    assert await world.checkpointer.run() == 2

    deltas = {
        key: (partition, decode_delta(value or b""))
        for topic, partition, records in world.producer.sent
        if topic == NAMES.deltas
        for key, value in records
    }
    acme, zed = delta_routing_key("t1", "requests", "acme"), delta_routing_key("t1", "requests", "zed")
    assert deltas == {
        acme.encode(): (
            partition_for(acme, DELTA_PARTITIONS),
            Delta("t1", "requests", "acme", BUCKET_MS, 2_500_000, 2, 0, 4),
        ),
        zed.encode(): (
            partition_for(zed, DELTA_PARTITIONS),
            Delta("t1", "requests", "zed", BUCKET_MS, 7_000_000, 9, 1, 8),
        ),
    }


async def test_nothing_to_do_sends_nothing() -> None:
    world = World()
    world.checkpointer.producer = None  # not even needed
    assert await world.checkpointer.run() == 0
    assert world.log == []
    assert await world.checkpointer.wait_idle()


async def test_messages_handled_during_a_checkpoint_wait_for_the_next_one() -> None:
    world = World(deliver_at_once=False)
    world.handled("m1")
    run = asyncio.ensure_future(world.checkpointer.run())
    await settle()
    world.handled("m2", offset=6)  # the meter goes on while the checkpoint waits for deliveries
    world.producer.deliver()
    await settle()
    world.producer.deliver()
    await run
    assert [entry for entry in world.log if step(entry) == 4] == ["ack m1"]

    world.producer.deliver_at_once = True
    await world.checkpointer.run()
    assert [entry for entry in world.log if step(entry) == 4] == ["ack m1", "ack m2"]


async def test_checkpoints_do_not_overlap() -> None:
    """The timer's checkpoint and the one before a rebalance may be asked for at once: the second
    starts only after the first has acknowledged its messages."""
    world = World(deliver_at_once=False)
    world.handled("m1")
    first = asyncio.ensure_future(world.checkpointer.run())
    await settle()
    world.handled("m2", offset=6)
    second = asyncio.ensure_future(world.checkpointer.run())
    await settle()
    assert all(topic in STEP_1 for topic in world.producer.topics())  # only the first's step 1
    world.producer.deliver_at_once = True
    world.producer.deliver()
    await first
    await second
    assert [entry for entry in world.log if step(entry) == 4] == ["ack m1", "ack m2"]
    sent_by_first = sum(1 for entry in world.log[: world.log.index("ack m1")] if entry.startswith("send"))
    m2_entry = next(
        i for i, (_, _, records) in enumerate(world.producer.sent) if (b"t1|m2", b"entry") in records
    )
    assert m2_entry >= sent_by_first  # the second's first record went out after the first finished


async def test_a_watermark_sent_is_backed_by_dedupe_entries_already_durable() -> None:
    """The module docstring's promise: a durable watermark implies that the decisions that advanced it
    are durable too. The meter keeps handling messages while step 1's deliveries are in flight: here
    m2 counts an event of the checkpoint's hour and m3 one 49 hours later (the default lateness is
    48 h). Were m3's watermark sent in this checkpoint's step 2 while the dedupe entries of m2 and m3
    wait for the next one, a crash between the two would read m2 again behind a watermark 49 hours
    ahead and without its dedupe entry: an event counted before the crash would become "too late"."""
    world = World(deliver_at_once=False)
    world.handled("m1")
    run = asyncio.ensure_future(world.checkpointer.run())
    await settle()
    world.handled("m2", offset=6)  # both during step 1
    world.handled("m3", offset=7, watermark_ms=BUCKET_MS + 49 * 3_600_000)
    world.producer.deliver()
    await settle()
    world.producer.deliver()
    await run

    assert [entry for entry in world.log if step(entry) == 4] == ["ack m1"]  # m2, m3 wait: not durable
    assert set(world.tables["dedupe"].staged[0]) == {b"t1|m2", b"t1|m3"}  # not sent yet
    watermarks = [
        records for topic, _, records in world.producer.sent if topic == NAMES.changelog("watermarks")
    ]
    assert watermarks == [[(SKEY, str(BUCKET_MS).encode())]]  # m1's watermark only
