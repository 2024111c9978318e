"""The PostgreSQL sink's position, as its database and Kafka see it, and an operator's rewind.

The sink seeks to the offsets its database stores whenever it is given a partition, so a restore of
PostgreSQL needs nothing from the operator. A rewind to the logs' start is for the other case: rows
missing from the derived tables (``events``, ``watermarks``, ``counters``) while their records are
still in Kafka; the sink writes again whatever the topics hold, and rows still present stay as they
are (the ledger is keyed by the input's source, counters are guarded by seq, watermarks only advance).
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from stripemeter.adapters.kafka.positions import group_positions
from stripemeter.adapters.postgres import sink_offsets
from stripemeter.core.sink_resume import resume_at
from stripemeter.domain.errors import Permanent
from stripemeter.domain.kafka_access import KafkaAccess
from stripemeter.schemas.topics import TopicNames


class SinkRunning(Permanent, RuntimeError):
    """A sink of the group runs: it would store its own offsets over the rewound ones."""


@dataclass(frozen=True)
class SinkPartition:
    topic: str
    partition: int
    database: int | None  # the next offset stored with the rows; None: none stored yet
    committed: int | None  # the group's committed offset in Kafka (lag monitoring)
    log_start: int
    log_end: int

    @property
    def state(self) -> str:
        """What the sink does with this partition when it is next assigned, in words."""
        if self.database is None:
            return "no offset stored: the sink takes Kafka's committed offset (or the log's start)"
        resume = resume_at(self.database, self.log_start, self.log_end)
        if resume.lost:
            return f"retention removed {resume.lost} offsets never written"
        if resume.ahead:
            return "past the log's end: the database was written from another log"
        if self.committed is not None and self.committed > self.database:
            return f"Kafka's commit is ahead: the sink writes {self.committed - self.database} offsets again"
        return "ok"


async def positions(kafka: KafkaAccess, database_url: str, names: TopicNames) -> list[SinkPartition]:
    group, topics = names.sink_group, names.sink_inputs
    kafka_side = await group_positions(kafka, group, topics)
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        stored = await sink_offsets.load(conn, group, topics)
    return [
        SinkPartition(tp[0], tp[1], stored.get(tp), kafka_side.committed.get(tp), start, end)
        for tp, (start, end) in sorted(kafka_side.bounds.items())
    ]


async def rewind_to_earliest(kafka: KafkaAccess, database_url: str, names: TopicNames) -> list[SinkPartition]:
    """Store the logs' start as the sink's offsets: its next start writes again everything the topics
    hold. Refused while a member of the sink's group runs (stop every sink first)."""
    group, topics = names.sink_group, names.sink_inputs
    kafka_side = await group_positions(kafka, group, topics)
    if kafka_side.members:
        raise SinkRunning(
            f"{kafka_side.members} consumer(s) of {group} run: stop every sink (workers running the sink,"
            " `stripemeter sink` processes) and rewind again"
        )
    starts = {tp: start for tp, (start, _) in kafka_side.bounds.items()}
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await sink_offsets.set_offsets(conn, group, starts)
    return await positions(kafka, database_url, names)
