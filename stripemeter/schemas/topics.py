"""Every Kafka topic stripemeter uses, as code: name, partitions, retention and cleanup policy.

Contract topics keep their contract names; one prefix setting renames them all (tests use it to
isolate themselves). Internal topics belong to the worker (Faust changelogs) and are created here
too, so their partition counts always match the source topic.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from stripemeter.domain.config import Settings

HOUR_MS = 3600 * 1000
DAY_MS = 24 * HOUR_MS
# Producers may send oversized messages; the broker must take them so the pipeline can dead-letter
# them with a reason instead of the producer failing out of sight.
LARGE_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Replication:
    """How many brokers hold each partition, and how many of them must have a write before it is
    acknowledged (producers send with acks=all). ``factor - min_insync`` brokers may be down without
    stopping writes; with ``min_insync`` >= 2 an acknowledged write survives the loss of any one disk."""

    factor: int
    min_insync: int


# a cluster of three brokers: one may fail (or restart for an upgrade) while every write still
# lands on two disks
THREE_BROKERS = Replication(3, 2)
# one broker (the local stack, tests, benchmarks): nothing survives the loss of its disk
SINGLE_BROKER = Replication(1, 1)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    retention_ms: int  # -1 = keep forever
    cleanup_policy: str  # "delete" or "compact"
    internal: bool = False
    purpose: str = ""
    max_message_bytes: int = 1024 * 1024
    replication: Replication = SINGLE_BROKER

    def config(self) -> dict[str, str]:
        return {
            "retention.ms": str(self.retention_ms),
            "cleanup.policy": self.cleanup_policy,
            "max.message.bytes": str(self.max_message_bytes),
            "min.insync.replicas": str(self.replication.min_insync),
        }


@dataclass(frozen=True)
class TopicNames:
    """Resolved names of the contract topics and the worker's internal topics."""

    prefix: str = ""
    app_id: str = "stripemeter"

    def _p(self, name: str) -> str:
        return f"{self.prefix}{name}"

    @property
    def events(self) -> str:
        return self._p("usage.events")

    @property
    def dlq(self) -> str:
        return self._p("usage.events.dlq")

    @property
    def late(self) -> str:
        return self._p("usage.late")

    @property
    def deltas(self) -> str:
        return self._p("usage.deltas")

    @property
    def drift(self) -> str:
        return self._p("reconciliation.drift")

    @property
    def keyed(self) -> str:
        """Internal: valid events re-keyed by (tenant, customer), many per message."""
        return f"{self.app_id}-events-keyed"

    @property
    def ledger(self) -> str:
        """Internal: every counted, duplicate and too-late event with its outcome, for PostgreSQL."""
        return f"{self.app_id}-ledger"

    @property
    def sink_group(self) -> str:
        """The PostgreSQL sink's consumer group, and its key in ``sink_offsets``."""
        return f"{self.app_id}-postgres-sink"

    @property
    def sink_inputs(self) -> list[str]:
        """What the PostgreSQL sink reads: the ledger, the dead letters and the deltas."""
        return [self.ledger, self.dlq, self.deltas]

    def changelog(self, table: str) -> str:
        """Faust names a table's changelog ``{app_id}-{table}-changelog``."""
        return f"{self.app_id}-{table}-changelog"


# Tables the worker keeps; each gets a compacted changelog with the source topic's partition count.
TABLES = ("dedupe", "counters", "watermarks")


def topic_specs(
    names: TopicNames, partitions: int, replication: Replication = SINGLE_BROKER
) -> list[TopicSpec]:
    return [replace(spec, replication=replication) for spec in _specs(names, partitions)]


def _specs(names: TopicNames, partitions: int) -> list[TopicSpec]:
    return [
        TopicSpec(
            names.events,
            partitions,
            7 * DAY_MS,
            "delete",
            purpose="usage events from producers",
            max_message_bytes=LARGE_MESSAGE_BYTES,
        ),
        TopicSpec(
            names.dlq,
            partitions,
            30 * DAY_MS,
            "delete",
            purpose="rejected inputs with reasons",
            max_message_bytes=LARGE_MESSAGE_BYTES + 64 * 1024,
        ),
        TopicSpec(names.late, partitions, 30 * DAY_MS, "delete", purpose="valid but too-late events"),
        TopicSpec(names.deltas, partitions, 7 * DAY_MS, "delete", purpose="counter changes to push"),
        TopicSpec(names.drift, 1, 30 * DAY_MS, "delete", purpose="reconciliation drift records"),
        TopicSpec(
            names.keyed,
            partitions,
            7 * DAY_MS,
            "delete",
            internal=True,
            purpose="valid events re-keyed by tenant and customer",
            max_message_bytes=4 * 1024 * 1024,
        ),
        TopicSpec(
            names.ledger,
            partitions,
            7 * DAY_MS,
            "delete",
            internal=True,
            purpose="events with their outcome, on their way to the PostgreSQL ledger",
            max_message_bytes=8 * 1024 * 1024,
        ),
        *(
            TopicSpec(names.changelog(t), partitions, -1, "compact", internal=True, purpose=f"{t} table")
            for t in TABLES
        ),
    ]


def replication_of(settings: Settings) -> Replication:
    return Replication(settings.topic_replication_factor, settings.topic_min_insync_replicas)


def deployment_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic of the deployment ``settings`` describe, with its replication settings."""
    names = TopicNames(settings.topic_prefix, settings.app_id)
    return topic_specs(names, settings.partitions, replication_of(settings))


def specs_document(specs: list[TopicSpec]) -> list[dict[str, object]]:
    """The topics as JSON-ready rows (``stripemeter topics specs``; ``streams/topics.json`` holds the
    defaults' rows, for readers and tools outside Python)."""
    return [
        {
            "name": s.name,
            "partitions": s.partitions,
            "replicationFactor": s.replication.factor,
            "internal": s.internal,
            "purpose": s.purpose,
            "config": s.config(),
        }
        for s in specs
    ]
