"""Benchmark: replay dry-run and apply over a window of the ledger, next to a bare scan of it.

The ledger is seeded straight into PostgreSQL (as if the pipeline had run): ``events`` rows in one
window, ``late`` of them too late and the rest counted, spread over customers and hours. The apply
sends its corrections to a real keyed topic (isolated names) and returns once the broker has them,
as it does in production. The baseline, in the same run, is one bare aggregate over the same window
(count and sum of every event): the least any recomputation from the ledger has to read.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from aiokafka import AIOKafkaProducer

from stripemeter.adapters.kafka.admin import create_topics_of, delete_topics_of
from stripemeter.adapters.kafka.client_auth import client_kwargs
from stripemeter.core.replay_window import Window
from stripemeter.domain.config import Settings
from stripemeter.domain.units import MICROS
from stripemeter.schemas.topics import replication_of
from stripemeter.services.replayer import Replayer, ReplayRequest

Say = Callable[[str], None]
HOUR = timedelta(hours=1)


async def seed(
    conn: psycopg.AsyncConnection, tenant: str, events: int, late: int, customers: int, start: datetime
) -> None:
    columns = (
        "source_topic, source_partition, source_offset, source_index, outcome, tenant_id, metric,"
        " customer_ref, quantity_micros, ts, idempotency_key, key_derived"
    )
    async with conn.cursor() as cur, cur.copy(f"COPY events ({columns}) FROM STDIN") as copy:
        for i in range(events):
            ts = start + (i % 24) * HOUR + timedelta(seconds=i % 3600)
            outcome = "late" if i < late else "counted"
            customer = f"c{i % customers}"
            await copy.write_row(
                ("bench", 0, i, 0, outcome, tenant, "requests", customer, MICROS, ts, f"k{i}", False)
            )
    await conn.execute("ANALYZE events")


async def bare_scan(conn: psycopg.AsyncConnection, tenant: str, window: Window) -> float:
    started = time.perf_counter()
    await conn.execute(
        "SELECT count(*), sum(quantity_micros) FROM events WHERE tenant_id = %s AND metric = 'requests'"
        " AND ts >= %s AND ts < %s",
        (tenant, window.since, window.until),
    )
    return time.perf_counter() - started


async def replay_window(
    settings: Settings, events: int, late: int, customers: int, say: Say
) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    env = settings.with_overrides(topic_prefix=f"b{tag}.", app_id=f"bench-{tag}")
    names = await create_topics_of(env.kafka, env.app_id, env.topic_prefix, 4, replication_of(env))
    tenant = f"bench-rp-{tag}"
    start = (datetime.now(UTC) - timedelta(days=3)).replace(minute=0, second=0, microsecond=0)
    window = Window(start, start + 24 * HOUR)
    producer = AIOKafkaProducer(**client_kwargs(env.kafka), acks="all", enable_idempotence=True)
    await producer.start()
    results: dict[str, Any] = {"events": events, "late": late}
    try:
        async with await psycopg.AsyncConnection.connect(env.database_url.value, autocommit=True) as conn:
            say(f"seeding {events:,} ledger rows ({late:,} too late), {customers:,} customers, 24 h ...")
            await seed(conn, tenant, events, late, customers, start)
            replayer = Replayer(producer, names.keyed)
            baseline = min([await bare_scan(conn, tenant, window) for _ in range(3)])
            for mode in ("dry-run", "apply"):
                request = ReplayRequest(tenant, ["requests"], None, window, mode)
                started = time.perf_counter()
                report = await replayer.run(conn, request)
                seconds = time.perf_counter() - started
                if report["eventsScanned"] != events or report["eventsReplayed"] != late:
                    raise RuntimeError(
                        f"{mode}: scanned {report['eventsScanned']}, replayed {report['eventsReplayed']}"
                    )
                results[mode] = seconds
                say(
                    f"  {mode:8} {seconds:6.3f} s: {events / seconds:,.0f} events scanned/s,"
                    f" {late / seconds:,.0f} too-late events/s, {len(report['counters']):,} counters"
                )
            say(f"  baseline (bare count + sum over the window): {baseline:.3f} s;"
                f" ratio baseline/apply {baseline / results['apply']:.2f}")  # fmt: skip
            results["baseline"] = baseline
            for table in ("events", "replays", "replay_corrections", "replayed_keys"):
                await conn.execute(f"DELETE FROM {table} WHERE tenant_id = %s", (tenant,))
    finally:
        await producer.stop()
        await delete_topics_of(env.kafka, env.app_id, env.topic_prefix)
    return results
