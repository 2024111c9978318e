"""What `bench cycle` reads at each tenth of its run: rates, lag, memory, bytes and Stripe calls."""

from __future__ import annotations

import contextlib
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psycopg

from stripemeter.adapters.kafka.inspect.kinds import consumer_groups
from stripemeter.adapters.kafka.lag import measure
from stripemeter.domain.kafka_access import KafkaAccess
from stripemeter.schemas.topics import TopicNames

MIB = 2**20
# a Stripe object id in a path (cus_..., mtr_...): calls are counted by kind, not by object
_OBJECT_ID = re.compile(r"[a-z]+_[A-Za-z0-9]{14,}")
# the tables the report shows by name; the others are summed as "other"
SHOWN_TABLES = ("events", "counters", "stripe_pushes", "stripe_push_requests")

# a partitioned table's partitions are counted as the table
PG_SIZES = """
SELECT coalesce(parent.relname, c.relname), sum(pg_total_relation_size(c.oid))
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_inherits i ON i.inhrelid = c.oid
LEFT JOIN pg_class parent ON parent.oid = i.inhparent
WHERE n.nspname = current_schema() AND c.relkind = 'r'
GROUP BY 1
"""


@dataclass
class Sample:
    wall_s: float
    event_time_ms: int
    sent: int
    lag_messages: dict[str, int]  # consumer group role -> messages behind
    lag_seconds: float  # the oldest unconsumed record's age, over all groups
    rss_mib: dict[str, float]  # process -> resident memory
    rocksdb_bytes: int
    topic_bytes: dict[str, int]  # "changelogs" and the other topics by name
    table_bytes: dict[str, int]  # PostgreSQL table -> bytes with indexes and TOAST
    hours_due: int  # counter hours the Stripe writer has yet to push
    stripe_calls: Counter[str] = field(default_factory=Counter)  # kind -> calls so far


def call_kind(method_and_path: str) -> str:
    """``POST /v1/billing/meter_events`` -> ``POST meter_events``; ids are left out."""
    method, _, path = method_and_path.partition(" ")
    parts = [p for p in path.split("/") if p and p != "v1" and p != "billing" and not _OBJECT_ID.fullmatch(p)]
    return f"{method} {'/'.join(parts)}"


def calls_by_kind(requests: Counter[str]) -> Counter[str]:
    kinds: Counter[str] = Counter()
    for key, n in requests.items():
        kinds[call_kind(key)] += n
    return kinds


def tree_bytes(root: Path) -> int:
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # RocksDB and Kafka delete files as we walk
                total += os.stat(os.path.join(folder, name)).st_blocks * 512  # on disk, not sparse
    return total


def topic_bytes(kafka_data: Path, names: TopicNames) -> dict[str, int]:
    """Bytes on the broker's disk of the run's topics: the changelogs together, the others by name."""
    sizes: Counter[str] = Counter()
    if not kafka_data.is_dir():
        return {}
    for entry in kafka_data.iterdir():
        topic = entry.name.rpartition("-")[0]
        if not (topic.startswith(names.prefix) or topic.startswith(f"{names.app_id}-")):
            continue
        label = "changelogs" if topic.endswith("-changelog") else _short(topic, names)
        sizes[label] += tree_bytes(entry)
    return dict(sizes)


def _short(topic: str, names: TopicNames) -> str:
    for prefix in (names.prefix, f"{names.app_id}-"):
        if topic.startswith(prefix):
            return topic[len(prefix) :]
    return topic


async def table_bytes(database_url: str) -> dict[str, int]:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        rows = await (await conn.execute(PG_SIZES)).fetchall()
    return {str(name): int(size) for name, size in rows}


async def hours_due(database_url: str, before: datetime | None = None) -> int:
    """Counter hours the Stripe writer has still to push (of hours before ``before``)."""
    query = "SELECT count(*) FROM stripe_pushes WHERE status IN ('waiting', 'pending')"
    query += " AND bucket < %s" if before is not None else ""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        row = await (await conn.execute(query, (before,) if before is not None else ())).fetchone()
    return int(row[0]) if row is not None else 0


async def lag_by_role(kafka: KafkaAccess, names: TopicNames) -> tuple[dict[str, int], float]:
    roles = {group: role.split(" ")[0].split(":")[0] for group, role in consumer_groups(names.app_id).items()}
    messages: Counter[str] = Counter()
    oldest = 0.0
    try:
        lags = await measure(kafka, names)
    except Exception:  # a sample without lag rather than no sample: the broker may be busy
        return {}, 0.0
    for lag in lags:
        messages[roles.get(lag.group, lag.group)] += lag.messages
        oldest = max(oldest, lag.seconds)
    return dict(messages), oldest


def _mib(n: float) -> str:
    return f"{n / MIB:,.0f}"


def table(samples: list[Sample], clock_text: Callable[[int], str]) -> Iterable[str]:
    """The per-tenth report as Markdown rows (each row: what happened since the previous sample)."""
    processes = sorted({p for s in samples for p in s.rss_mib})
    kinds = sorted({k for s in samples for k in s.stripe_calls})
    roles = sorted({r for s in samples for r in s.lag_messages})
    yield (
        "| tenth | wall s | event time | events/s | lag (msgs: "
        + ", ".join(roles)
        + ") | oldest lag s | hours due to Stripe | RSS MiB ("
        + ", ".join(processes)
        + ") | RocksDB MiB | changelogs MiB | other topics MiB | PostgreSQL MiB ("
        + ", ".join((*SHOWN_TABLES, "other"))
        + ") | Stripe calls ("
        + ", ".join(kinds)
        + ") |"
    )
    yield "|" + "---|" * 13
    previous: Sample | None = None
    for i, s in enumerate(samples):
        if previous is None:
            previous = s
            continue
        seconds = max(s.wall_s - previous.wall_s, 1e-9)
        others = sum(v for k, v in s.topic_bytes.items() if k != "changelogs")
        shown = [s.table_bytes.get(t, 0) for t in SHOWN_TABLES]
        rest = sum(s.table_bytes.values()) - sum(shown)
        calls = [s.stripe_calls.get(k, 0) - previous.stripe_calls.get(k, 0) for k in kinds]
        yield (
            f"| {i if i <= 10 else 'end'} | {s.wall_s:,.0f} | {clock_text(s.event_time_ms)} "
            f"| {(s.sent - previous.sent) / seconds:,.0f} "
            f"| {', '.join(f'{s.lag_messages.get(r, 0):,}' for r in roles)} | {s.lag_seconds:,.0f} "
            f"| {s.hours_due:,} "
            f"| {', '.join(f'{s.rss_mib.get(p, 0):,.0f}' for p in processes)} "
            f"| {_mib(s.rocksdb_bytes)} | {_mib(s.topic_bytes.get('changelogs', 0))} | {_mib(others)} "
            f"| {', '.join(_mib(b) for b in (*shown, rest))} "
            f"| {', '.join(f'{c:,}' for c in calls)} |"
        )
        previous = s
