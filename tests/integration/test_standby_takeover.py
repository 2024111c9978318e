"""A standby replica promoted to owner counts exactly.

Two workers each hold one partition and keep a standby copy of the other's tables (Faust's
``table_standby_replicas``). While events stream, the first leaves: the second takes its partition
over from the copy it kept current. Every counter and the ledger's outcomes must equal the oracle, and
the second worker's stores must hold every key the first one's held (nothing expires here).

The copies are kept by our own changelog reader (stripemeter/adapters/kafka/standby_copies.py): with
Faust's, this failed in 3 of 22 runs, the promoted copy missing the partition's first entries
(docs/sizing.md, "Standby replicas"). The workers run with the default STRIPEMETER_STANDBY_REPLICAS (1).
The second test changes that setting to 0 on a running pair.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
import rocksdict

from stripemeter.domain.config import Settings
from tests.integration.client import eventually, outcomes_of
from tests.integration.harness import StartWorker, WorkerProcess, assigned_partitions, table_stores
from tests.integration.test_exactly_once import assert_matches_oracle, during, send_anchors, stream_slowly
from tests.integration.workload import Workload, build

pytestmark = pytest.mark.exactly_once  # never rerun by CI; repeated by ./dev soak


def stored_keys(store: Path) -> set[bytes]:
    options = rocksdict.Options(raw_mode=True)
    db = rocksdict.Rdict(str(store), options=options, access_type=rocksdict.AccessType.read_only())
    try:
        return {bytes(key) for key, _ in db.items()}  # type: ignore[arg-type]  # raw mode: bytes
    finally:
        db.close()


async def a_pair_with_standby_copies(
    env: Settings, w: Workload, start_worker: StartWorker
) -> tuple[WorkerProcess, WorkerProcess]:
    """Two workers, "a" and "b", holding a partition each, "b" a copy of both; the anchors counted."""
    first = start_worker("a")
    first.wait_ready()
    await send_anchors(env, w)
    second = start_worker("b")

    async def one_partition_each_and_a_standby_copy() -> bool:
        try:
            held = (assigned_partitions(first), assigned_partitions(second))
        except OSError:
            return False
        return held == (1, 1) and set(table_stores(second, "dedupe")) == {0, 1}

    await eventually(one_partition_each_and_a_standby_copy, timeout=120, what="a partition each, standbys")
    await asyncio.to_thread(second.wait_ready, 120)
    return first, second


async def test_a_standby_promoted_to_owner_counts_exactly(env: Settings, start_worker: StartWorker) -> None:
    w = build(f"sb-{uuid.uuid4().hex[:6]}", events=5000)
    first, second = await a_pair_with_standby_copies(env, w, start_worker)

    async def chaos() -> None:
        async def streaming() -> bool:
            return (await outcomes_of(env, w.tenant)).get("counted", 0) >= len(w.anchors) + 500

        await eventually(streaming, timeout=60, what="events of the stream counted")
        first.stop()  # leaves gracefully: its partition goes to the standby on the second

        async def all_on_second() -> bool:
            return assigned_partitions(second) == 2

        await eventually(all_on_second, timeout=60, what="the second worker holding both partitions")

    await during(stream_slowly(env, w, seconds=15), chaos)
    await assert_matches_oracle(env, w)
    second.stop()
    for table in ("dedupe", "counters", "watermarks"):
        firsts, seconds = table_stores(first, table), table_stores(second, table)
        for partition, store in firsts.items():
            missing = stored_keys(store) - stored_keys(seconds[partition])
            assert not missing, (
                f"{table} partition {partition}: {len(missing)} entries missing, e.g. {sorted(missing)[:3]}"
            )


async def test_standbys_turned_off_while_events_stream_leave_counting_exact(
    env: Settings, start_worker: StartWorker
) -> None:
    """STRIPEMETER_STANDBY_REPLICAS changed from 1 to 0 on a running pair: each worker restarts with 0
    in turn while events stream (the copies they kept stay on disk, no longer read), then the first
    leaves and the second takes its partition over from its stale copy and the changelog's tail. Events
    produced right after each restart, and the counters that existed before, equal the oracle."""
    w = build(f"sb0-{uuid.uuid4().hex[:6]}", events=8000)
    first, second = await a_pair_with_standby_copies(env, w, start_worker)

    async def counted_more(n: int) -> None:
        """Until ``n`` more events of the stream are counted than now."""
        start = (await outcomes_of(env, w.tenant)).get("counted", 0)

        async def counted() -> bool:
            return (await outcomes_of(env, w.tenant)).get("counted", 0) >= start + n

        await eventually(counted, timeout=90, what=f"{n} more events of the stream counted")

    async def chaos() -> None:
        nonlocal first, second
        await counted_more(500)
        second.stop()
        second = start_worker("b-no-standby", slot="b", standby_replicas=0)
        await asyncio.to_thread(second.wait_ready, 120)
        await counted_more(800)
        first.stop()
        first = start_worker("a-no-standby", slot="a", standby_replicas=0)
        await asyncio.to_thread(first.wait_ready, 120)
        await counted_more(800)  # the first's partition moves on past what the second's copy holds
        first.stop()

        async def all_on_second() -> bool:
            return assigned_partitions(second) == 2

        await eventually(all_on_second, timeout=60, what="the second worker holding both partitions")

    await during(stream_slowly(env, w, seconds=45), chaos)
    await assert_matches_oracle(env, w)
