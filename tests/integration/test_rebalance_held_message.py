"""A keyed message the meter holds when a rebalance begins is left to the partition's next owner.

After each assignment the meter loads the metric mappings before its first message, and waits for
them while it holds that message. Here the load is held up on purpose (the test locks a table it
reads) while a second worker joins: the rebalance revokes the partitions of the held message's
generation before the load returns. Counted then, the message would write the changelogs of a
partition that another worker may own by now, from a view of it that is no longer current: the dedupe
changelog would hold its entries twice, and a later restore could pair counters and dedupe entries
of two different views (an event counted twice after the next re-send).

The first worker must leave it (stripemeter_meter_stale_messages_total), every dedupe entry must
reach the changelog exactly once, and the counters must equal the oracle. Whoever holds the partition
next must read the message at once: the partition was never committed, and the records its consumer
fetched during the rebalance were dropped (stripemeter/adapters/kafka/fetch_wait.py).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import psycopg
import pytest

from stripemeter.domain.config import Settings
from stripemeter.schemas.topics import TopicNames
from tests.integration.client import eventually, produce, read_topic
from tests.integration.harness import StartWorker, assigned_partitions, metric_value
from tests.integration.test_exactly_once import assert_matches_oracle
from tests.integration.workload import build

pytestmark = pytest.mark.exactly_once  # never rerun by CI; repeated by ./dev soak


async def test_a_message_held_across_a_rebalance_is_left_to_the_next_owner(
    env: Settings, start_worker: StartWorker
) -> None:
    w = build(f"held-{uuid.uuid4().hex[:6]}", events=0)  # the anchors only: 80 events, 80 dedupe keys
    first = start_worker("a")
    first.wait_ready()
    lock = await psycopg.AsyncConnection.connect(env.database_url.value)
    try:
        # the mappings load (a UNION of both tables) waits for this lock: the meter holds its message
        await lock.execute("LOCK TABLE metric_mapping_tombstones IN ACCESS EXCLUSIVE MODE")
        await produce(env, [w.anchors])

        async def first_holds_a_message() -> bool:
            if "first message of keyed partition" not in first.log_path.read_text():
                return False  # (the waiter could be the mappings' periodic refresh)
            cur = await lock.execute(
                "SELECT count(*) FROM pg_locks"
                " WHERE NOT granted AND relation = 'metric_mapping_tombstones'::regclass"
            )
            row = await cur.fetchone()
            return bool(row and row[0])

        await eventually(first_holds_a_message, timeout=60, what="the first worker's mappings load waiting")
        second = start_worker("b")

        async def one_partition_each() -> bool:
            try:
                return (assigned_partitions(first), assigned_partitions(second)) == (1, 1)
            except OSError:
                return False

        await eventually(one_partition_each, timeout=120, what="the rebalance done: a partition each")
        assert metric_value(first, "stripemeter_worker_revocations_total") >= 1
    finally:
        await lock.rollback()  # the load goes on, past the rebalance
        await lock.close()

    await asyncio.to_thread(second.wait_ready, 120)
    await assert_matches_oracle(env, w)
    dedupe = await read_topic(env, TopicNames(env.topic_prefix, env.app_id).changelog("dedupe"), 81, 10)
    written = Counter(record.key for record in dedupe)
    assert len(written) == len(w.anchors)
    twice = [key for key, n in written.items() if n > 1]
    assert not twice, f"{len(twice)} dedupe entries written more than once, e.g. {twice[:3]}"
    assert metric_value(first, "stripemeter_meter_stale_messages_total") == 1, first.log_tail()
    # the partition it held was read again at once, not after the meter's stall check restarted it
    assert "restarting the worker" not in first.log_path.read_text(), first.log_tail()
